"""The commands' handling of a user's mistakes, checked before any teacher is fine-tuned: a bad --out, a
bad number, conflicting flags, a missing file, a typo in a constraint, the config's own data.train; and
Ctrl-C. The engine is replaced by a stand-in that fails the test if the command gets that far."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from autodistill.cli import main
from autodistill.data import DataError, bundled_dataset_path

CR = str(bundled_dataset_path())


class Reached(Exception):
    """The stand-in engine was called: the command got past its checks."""


@pytest.fixture
def engine(monkeypatch):
    """Stand-ins for distill's, search's and auto's engines that record what they were given and raise
    :class:`Reached` (a real one would fine-tune a teacher)."""
    calls: list = []

    def stand_in(*args, **kwargs):
        calls.append((args, kwargs))
        raise Reached

    import autodistill.distill
    monkeypatch.setattr(autodistill.distill, "run_distillation", stand_in)
    monkeypatch.setattr("autodistill.cli.search.run_search", stand_in)
    monkeypatch.setattr("autodistill.cli.auto.run_auto", stand_in)
    return calls


def write_config(tmp_path, data: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def unusable_outs(tmp_path) -> dict:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    unrelated = tmp_path / "my-project"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    return {"a file": (a_file, "is a file"), "under a file": (a_file / "out", "cannot write there"),
            "an unrelated folder": (unrelated, "notes.txt")}


@pytest.mark.parametrize("command", ["distill", "search", "auto"])
@pytest.mark.parametrize("case", ["a file", "under a file", "an unrelated folder"])
def test_an_unusable_out_is_refused_before_any_work(engine, tmp_path, capsys, command, case):
    out, said = unusable_outs(tmp_path)[case]
    assert main([command, "--data", CR, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and said in err
    assert not engine
    if case == "an unrelated folder":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_distill_may_replace_its_own_earlier_output(engine, tmp_path):
    out = tmp_path / "out"
    (out / "student").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(Reached):
        main(["distill", "--data", CR, "--out", str(out)])


@pytest.mark.parametrize("command", ["search", "auto"])
def test_a_search_folder_is_left_to_the_search_to_judge(engine, tmp_path, command):
    """An earlier search's folder (resumed with --resume, refused by the search without it) passes."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "space.yaml").write_text("name: x\n")
    with pytest.raises(Reached):
        main([command, "--data", CR, "--resume", "--out", str(out)])


@pytest.mark.parametrize("command", ["search", "auto"])
@pytest.mark.parametrize("case", ["a new folder", "an empty folder"])
def test_resume_with_nothing_to_resume_is_refused(engine, tmp_path, capsys, command, case):
    out = tmp_path / "out"
    if case == "an empty folder":
        out.mkdir()
    assert main([command, "--data", CR, "--resume", "--out", str(out)]) == 2
    assert f"--out {out}: nothing to resume there" in capsys.readouterr().err
    assert not engine and out.exists() == (case == "an empty folder")


def test_resume_with_a_storage_path_is_left_to_the_search(engine, tmp_path):
    """The search's state lives at --storage-path (as for a cluster job the service resubmits): a new --out
    may resume it."""
    with pytest.raises(Reached):
        main(["search", "--data", CR, "--resume", "--storage-path", (tmp_path / "shared").as_uri(),
              "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("written", [False, True], ids=["nothing written yet", "the search started"])
def test_ctrl_c_before_any_student_says_resume_only_when_there_is_something_to_resume(tmp_path, monkeypatch,
                                                                                     capsys, written):
    out = tmp_path / "out"

    def interrupted(*args, **kwargs):
        out.mkdir()
        if written:
            (out / "space.yaml").write_text("name: x\n")
        raise KeyboardInterrupt
    monkeypatch.setattr("autodistill.cli.auto.run_auto", interrupted)
    assert main(["auto", "--data", CR, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    if written:
        assert f"`autodistill auto --resume --out {out}`" in err
    else:
        assert "--resume" not in err and "nothing in --out to resume yet" in err


def test_a_run_failing_before_it_writes_leaves_no_out_folder(tmp_path, capsys):
    """A data error is found after --out is checked; the check's folders (its parents too) are gone."""
    out = tmp_path / "new" / "out"
    assert main(["distill", "--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "missing.jsonl: no such file or folder (data.train, or --data on the command line)" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_search_may_run_in_the_folder_holding_its_own_inputs(engine, tmp_path):
    """As the service lays a search out: its config and warm start in --out before the search starts."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "request_config.json").write_text("{}")
    (out / "warm_start.json").write_text("[]")
    with pytest.raises(Reached):
        main(["search", "--data", CR, "--config", str(out / "request_config.json"),
              "--warm-start", str(out / "warm_start.json"), "--out", str(out)])


def test_distill_ctrl_c_says_nothing_was_written_and_exits_130(engine, tmp_path, monkeypatch, capsys):
    import autodistill.distill

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(autodistill.distill, "run_distillation", interrupted)
    try:
        code = main(["distill", "--data", CR, "--out", str(tmp_path / "out")])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped `distill` as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "cached" in err and "Traceback" not in err


def test_distill_and_search_read_the_configs_data_train_when_no_data_is_given(engine, tmp_path, capsys):
    mine = tmp_path / "mine.jsonl"
    cfg = write_config(tmp_path, {"data": {"train": str(mine)}})
    with pytest.raises(Reached):
        main(["distill", "--config", cfg, "--out", str(tmp_path / "d")])
    with pytest.raises(Reached):
        main(["search", "--config", cfg, "--out", str(tmp_path / "s")])
    distill_cfg, search_request = engine[0][0][0], engine[1][0][0]
    assert distill_cfg.data.train == str(mine)
    assert search_request.data == str(mine)
    assert "bundled" not in capsys.readouterr().err


def test_search_and_auto_read_the_spaces_data_train_when_no_data_is_given(engine, tmp_path, capsys):
    mine = str(tmp_path / "mine.jsonl")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "mine", "base": {"data": {"train": mine}},
                                     "params": [{"name": "optim.learning_rate", "choices": [1e-4, 3e-4]}]}))
    for command in ("search", "auto"):
        with pytest.raises(Reached):
            main([command, "--space", str(space), "--out", str(tmp_path / command)])
    search_request, auto_args = engine[0][0][0], engine[1][0]
    assert search_request.data == mine and auto_args[0] == mine
    assert "bundled" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["auto", "--seeds", "0"], "--seeds"),
    (["auto", "--trials", "0"], "--trials"),
    (["auto", "--time-budget", "-1"], "--time-budget"),
    (["auto", "--max-train-examples", "0"], "--max-train-examples"),
    (["search", "--trials", "0"], "--trials"),
    (["search", "--time-budget", "0"], "--time-budget"),
    (["search", "--max-train-examples", "0"], "--max-train-examples"),
    (["search", "--max-train-examples", "-5"], "--max-train-examples"),
    (["search", "--max-concurrent", "0"], "--max-concurrent"),
    (["search", "--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["search", "--gpus-per-trial", "-1"], "--gpus-per-trial"),
    (["search", "--time-budget", "nan"], "--time-budget"),
])
def test_an_impossible_number_is_a_usage_error_naming_the_option(engine, tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--data", CR, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err
    assert not engine and not (tmp_path / "out").exists()


def test_search_anchor_without_warm_start_and_a_missing_warm_start_file(engine, tmp_path, capsys):
    assert main(["search", "--data", CR, "--anchor", "--out", str(tmp_path / "a")]) == 2
    assert "--anchor" in capsys.readouterr().err
    missing = tmp_path / "seeds.yaml"
    assert main(["search", "--data", CR, "--warm-start", str(missing), "--out", str(tmp_path / "b")]) == 2
    assert f"--warm-start {missing}: no such file" in capsys.readouterr().err
    assert not engine


@pytest.mark.parametrize("command", ["search", "auto"])
def test_resources_the_cluster_cannot_grant_are_an_error_not_a_traceback(tmp_path, monkeypatch, capsys, command):
    from autodistill.resources import ResourceError

    def refused(*args, **kwargs):
        raise ResourceError("cpus_per_trial=64, but the Ray cluster has 2 CPU(s) in all: lower cpus_per_trial")
    monkeypatch.setattr(f"autodistill.cli.{command}.run_{command}", refused)
    assert main([command, "--data", CR, "--out", str(tmp_path / "out")]) == 2
    assert "error: cpus_per_trial=64" in capsys.readouterr().err


def test_run_auto_with_no_seed_is_a_config_error(tmp_path, monkeypatch):
    from autodistill import auto
    from autodistill.config import ConfigError

    def never(*args, **kwargs):
        raise Reached
    monkeypatch.setattr(auto, "recommend_for", never)
    with pytest.raises(ConfigError, match="seeds=0"):
        auto.run_auto(CR, tmp_path / "out", "unused", seeds=0)


def test_auto_without_resume_keeps_a_previous_runs_recommendations(tmp_path, monkeypatch, capsys):
    """Said before the dataset's meta-features are computed, and the earlier run's files are untouched."""
    from autodistill import auto

    def never(*args, **kwargs):
        raise Reached
    monkeypatch.setattr(auto, "recommend_for", never)
    out = tmp_path / "out"
    out.mkdir()
    (out / "recommendations.json").write_text('{"earlier": true}')
    assert main(["auto", "--data", CR, "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert json.loads((out / "recommendations.json").read_text()) == {"earlier": True}


# --------------------------------------------------------------------------- recommend
@pytest.mark.parametrize("constraint, said", [
    ("nosuch.path=1", "the config has no setting 'nosuch'"),
    ("student.num_layerz=2", "student has no setting 'num_layerz'"),
    ("student.num_layers.x=2", "student.num_layers is a setting, not a section"),
])
def test_recommend_constraint_naming_no_setting_is_an_error(monkeypatch, capsys, constraint, said):
    def never(*args, **kwargs):
        raise Reached
    monkeypatch.setattr("autodistill.cli.recommend.recommend_for", never)
    assert main(["recommend", "--data", CR, "--constraint", constraint]) == 2
    assert f"--constraint {constraint!r}: {said}" in capsys.readouterr().err


def tiny_dataset(tmp_path):
    path = tmp_path / "train.jsonl"
    words = ["good", "bad", "great", "awful", "fine", "poor"]
    path.write_text("".join(json.dumps({"text": f"{words[i % 6]} {words[(i * 5) % 6]} item {i}", "label": i % 2})
                            + "\n" for i in range(60)), encoding="utf-8")
    return path


def test_recommend_with_no_candidate_left_fails_and_says_why(tmp_path, capsys):
    data = tiny_dataset(tmp_path)
    assert main(["recommend", "--data", str(data), "--no-backbone", "--constraint", "student.num_layers=99"]) == 2
    err = capsys.readouterr().err
    assert "no pipeline" in err and "--constraint student.num_layers=99" in err


def test_recommend_reads_the_configs_data_train_when_no_data_is_given(tmp_path, capsys):
    data = tiny_dataset(tmp_path)
    cfg = write_config(tmp_path, {"data": {"train": str(data)}})
    assert main(["recommend", "--config", cfg, "--no-backbone", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == str(data)


# --------------------------------------------------------------------------- data
@pytest.mark.parametrize("content, said", [("", "empty, no rows"), ("\n\n", "empty, no rows but 2 blank line(s)")])
def test_an_empty_data_file_is_said_to_be_empty(tmp_path, content, said):
    from autodistill.config import DataConfig
    from autodistill.data import load_task_data

    path = tmp_path / "train.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(said)):
        load_task_data(DataConfig(train=str(path)))
    with pytest.raises(DataError, match=re.escape(f"{path}: {said}")):
        load_task_data(DataConfig(train=CR, validation=str(path)))


@pytest.mark.parametrize("columns, said", [
    ({"sentence": "good", "label": 1}, "data.text_column"),
    ({"text": "good", "target": 1}, "data.label_column"),
])
def test_a_missing_column_names_the_setting_that_picks_it(tmp_path, columns, said):
    from autodistill.config import DataConfig
    from autodistill.data import load_task_data

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(columns) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"column not found .*{said}"):
        load_task_data(DataConfig(train=str(path)))


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("folder, said", [("missing", "no such folder"), ("empty", "is not a model folder")])
def test_a_backbone_folder_that_is_no_model_says_so(tmp_path, capsys, folder, said):
    (tmp_path / "empty").mkdir()
    backbone = str(tmp_path / folder)
    cfg = write_config(tmp_path, {"teachers": [{"backbone": backbone}]})
    assert main(["distill", "--data", str(tiny_dataset(tmp_path)), "--config", cfg, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"error: backbone {backbone!r} (teachers[].backbone): " in err and said in err


def test_a_config_that_is_not_utf8_is_an_error_naming_the_file(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes("optim: {epochs: 1}\n# café\n".encode("latin-1"))
    assert main(["distill", "--data", CR, "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {cfg}: not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["NaN", "nan", " NaN "])
def test_a_nan_text_label_is_missing_not_a_class(tmp_path, missing):
    from autodistill.config import DataConfig
    from autodistill.data import load_task_data

    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"review {i},{missing if i == 5 else ('pos', 'neg')[i % 2]}\n"
                                             for i in range(40)), encoding="utf-8")
    with pytest.raises(DataError, match="line 7, column 'label': missing"):
        load_task_data(DataConfig(train=str(path)))
    task = load_task_data(DataConfig(train=str(path), bad_rows="drop"))
    assert task.label_names == ["neg", "pos"] and task.report.dropped["train"] == {"missing_label": 1}


def test_a_search_driver_over_its_memory_limit_exits_saying_so(tmp_path):
    """--driver-memory ends the whole process, wherever it is, once it has held more: here at once, since
    importing torch alone takes more than 0.05 GiB."""
    import signal
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "autodistill.cli", "search", "--data", CR, "--driver-memory", "0.05",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL
    assert re.search(r"error: this process held \d+\.\d\d GiB, over --driver-memory=0.05 GiB", done.stderr)


def test_the_memory_watchdog_judges_a_process_on_its_own_memory():
    """A small process started by a large one is left alone: on Linux ru_maxrss would carry the parent's
    resident memory into the child (across fork and exec), VmHWM does not."""
    import subprocess
    import sys
    parent = bytearray(700 * 2 ** 20)
    parent[::4096] = b"x" * len(parent[::4096])                   # this process now holds >= 700 MB
    code = ("import time; from autodistill.resources import watch_memory; watch_memory(0.5, 'x', every_s=0.05); "
            "time.sleep(0.5); print('alive')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    del parent
    assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr
