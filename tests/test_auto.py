"""The main job: a student always (the top recommendation trained to completion first), a verdict at
the end, a non-zero exit with the cause when nothing can be trained, per-event progress in a pipe."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_search import CR, cli_env, tiny_space, write_space

from autodistill.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_budget_too_small_for_the_search_still_exports_the_recommended_student(tiny_backbone, tmp_path, capsys):
    space = write_space(tmp_path, tiny_space(tiny_backbone))
    out = tmp_path / "auto"
    code = main(["auto", "--data", CR, "--space", str(space), "--trials", "4", "--time-budget", "1",
                 "--seeds", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    best = out / "best"
    assert (best / "student" / "config.json").is_file() and (best / "metrics.json").is_file()
    trial = json.loads((best / "trial.json").read_text())
    assert trial["trial_id"] == "anchor" and trial["origin"].startswith("recommendation #1: ")
    # the student is the top recommendation exactly, not its projection onto the (tiny) search space
    import yaml
    from autodistill.config import PipelineConfig, pipeline_only
    top = json.loads((out / "recommendations.json").read_text())["recommendations"][0]
    trained = PipelineConfig.model_validate(yaml.safe_load((best / "config.yaml").read_text()))
    assert pipeline_only(trained) == pipeline_only(PipelineConfig.model_validate(top["config"]))
    assert trial["origin"] == f"recommendation #1: {top['candidate']}"
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["student"]["path"] == str(best.resolve())
    assert verdict["student"]["score"] == json.loads((best / "metrics.json").read_text())["student_score"]
    assert verdict["latency"]["speedup"] > 0 and verdict["data"]["subsample"] is not None  # the space's 400 rows
    text = captured.out
    assert "== verdict ==" in text and f"best student   {best.resolve()}/student" in text
    assert trial["origin"] in text and "% of the teacher" in text and "CPU latency" in text
    assert "[search] skipped:" in captured.err and "less than one student takes" in captured.err


def test_nothing_trainable_exits_non_zero_and_names_the_cause(tiny_backbone, tmp_path, capsys):
    data = tiny_space(tiny_backbone)
    data["base"]["student"] = {"num_layers": 8}          # the tiny teacher has 4 layers
    space = write_space(tmp_path, data)
    out = tmp_path / "auto"
    code = main(["auto", "--data", CR, "--space", str(space), "--trials", "1", "--seeds", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert "no student could be trained" in err and "student.num_layers=8" in err and "--space" in err
    assert not (out / "best").exists()


def test_progress_reaches_a_pipe_as_it_happens_and_ctrl_c_keeps_the_student_and_says_how_to_resume(
        tiny_backbone, tmp_path, capsys, monkeypatch):
    """`auto` in a pipe prints one line per event while it runs; Ctrl-C after the first search trial keeps the
    anchor's student and prints how to resume, and resuming reuses it. One run serves both checks."""
    import signal
    space = write_space(tmp_path, tiny_space(tiny_backbone, max_concurrent_trials=1))
    out = tmp_path / "auto"
    # a cache of its own: the teacher is fine-tuned here, not loaded from an earlier test's run
    env = {**cli_env(), "PYTHONPATH": str(REPO), "AUTODISTILL_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "autodistill.cli", "auto", "--data", CR, "--space", str(space), "--trials", "4",
           "--seeds", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines, seen_while_running = [], set()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if proc.poll() is None:
                seen_while_running.update(tag for tag in ("[teacher]", "[anchor]", "[search]") if tag in line)
            if "[search] trial" in line and "finished" in line:
                os.kill(proc.pid, signal.SIGINT)   # Ctrl-C while the search runs
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines += rest.splitlines()
    text = "\n".join(lines)
    assert proc.returncode == 130, text
    assert seen_while_running == {"[teacher]", "[anchor]", "[search]"}, text   # not only at exit
    events = [ln for ln in lines if ln.startswith("[") and "] [" in ln]
    assert any("[teacher] epoch" in ln and "dev accuracy" in ln for ln in events), text
    assert any("[anchor] finished" in ln for ln in events), text
    for event in ("started", "reported dev", "finished"):
        assert any("[search] trial" in ln and event in ln and "best so far" in ln for ln in events), (event, text)
    assert "\r" not in text                                                    # no terminal bar in a pipe
    assert not any("Some weights" in ln or "INFO" in ln for ln in lines), text  # library chatter hidden
    assert (out / "best" / "student" / "config.json").is_file(), text            # the anchor's student, kept
    assert f"autodistill auto --resume --out {out}" in text and "== verdict ==" in text
    # resuming reuses the completed anchor instead of training it again
    monkeypatch.setenv("AUTODISTILL_CACHE", env["AUTODISTILL_CACHE"])
    assert main(["auto", "--data", CR, "--space", str(space), "--trials", "1", "--seeds", "2", "--resume",
                 "--out", str(out)]) == 0
    assert "reusing the completed recommendation #1" in capsys.readouterr().err


def test_slow_machine_is_flagged_early_with_what_fits():
    from autodistill.search.driver import pace_note
    from autodistill.search.space import Budget
    budget = Budget(trials=8, time_budget_s=600, max_concurrent_trials=2)   # 150 s per student
    assert pace_note(120, budget, used=120, students_left=7) is None
    note = pace_note(465, budget, used=465, students_left=7)
    assert "3.1x the 150 s per student" in note and "--time-budget" in note and "--trials" in note


def test_warm_start_points_give_distinct_trial_configs(tiny_backbone):
    from autodistill.config import PipelineConfig
    from autodistill.records import config_hash
    from autodistill.search.space import SearchSpace, warm_start_points
    space = SearchSpace.from_dict(tiny_space(tiny_backbone))
    # an objective the space lacks (pkd) resolves to the space's default, as the empty config does:
    # two seeds would train one student twice
    cfgs = [{"loss": {"intermediate": {"objective": "mi_alpha", "alpha": 0.5}}},
            {"loss": {"intermediate": {"objective": "pkd"}}}, {}]
    points = warm_start_points(space, [PipelineConfig.model_validate(c) for c in cfgs], 4)
    hashes = {config_hash(space.to_config(space.encode(p))) for p in points}
    assert len(points) == 2 and len(hashes) == 2
    for p in points:   # complete: every active parameter is set, none is left to the sampler
        assert set(p) == {q.name for q in space.params if space.active(q, p)}


def test_search_whose_budget_ends_before_any_student_says_so_and_fails(tiny_backbone, tmp_path, capsys):
    space = write_space(tmp_path, tiny_space(tiny_backbone))
    out = tmp_path / "search"
    code = main(["search", "--data", CR, "--space", str(space), "--trials", "2", "--time-budget", "1",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "no trial completed within the time budget (1 s, --time-budget)" in err and "autodistill auto" in err
    assert not (out / "best").exists()


def test_one_seed_means_the_anchor_alone(tiny_backbone, tmp_path):
    """--seeds 1: the top recommendation trains first and nothing else seeds the search."""
    from autodistill.auto import run_auto
    space = write_space(tmp_path, tiny_space(tiny_backbone))
    out = tmp_path / "auto"
    result = run_auto(CR, out, REPO / "meta_dataset" / "model", space=str(space), trials=1, seeds=1, quiet=True)
    saved = json.loads((out / "recommendations.json").read_text())
    assert saved["warm_start"] == [] and saved["anchor"].startswith("recommendation #1: ")
    assert result.search.anchor is not None and result.warm_start == []
