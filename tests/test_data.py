"""Tests of the data layer (autodistill.data)."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from autodistill.config import DataConfig
from autodistill.data import DataError, bundled_dataset_path, load_task_data

TRAIN = [{"text": f"good thing {i}", "label": 1} for i in range(10)] + \
        [{"text": f"bad thing {i}", "label": 0} for i in range(10)]
VAL = [{"text": "good one", "label": 1}, {"text": "bad one", "label": 0}]


# --------------------------------------------------------------------------- helpers
def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_delimited(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_hf(path: Path, rows: list[dict], val: list[dict] | None = None) -> Path:
    from datasets import Dataset, DatasetDict

    def to_ds(rs):
        return Dataset.from_dict({k: [r[k] for r in rs] for k in rs[0]})
    obj = to_ds(rows) if val is None else DatasetDict({"train": to_ds(rows), "validation": to_ds(val)})
    obj.save_to_disk(str(path))
    return path


def load(train, validation=None, **kw):
    return load_task_data(DataConfig(train=str(train), validation=None if validation is None else str(validation),
                                     **kw))


def msg(*parts: str) -> str:
    """A regex matching the given parts in order (file, line, column ...)."""
    return ".*".join(re.escape(p) for p in parts)


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet", "hf"])
def test_each_format_loads_same_content(tmp_path, fmt):
    writers = {"jsonl": lambda p, r: write_jsonl(p, r), "csv": lambda p, r: write_delimited(p, r),
               "tsv": lambda p, r: write_delimited(p, r, "\t"), "parquet": write_parquet,
               "hf": write_hf}
    train = writers[fmt](tmp_path / (f"train.{fmt}" if fmt != "hf" else "train_hf"), TRAIN)
    val = writers[fmt](tmp_path / (f"validation.{fmt}" if fmt != "hf" else "val_hf"), VAL)
    data = load(train, val)
    assert data.task_type == "classification" and data.num_labels == 2 and data.label_names == ["0", "1"]
    assert not data.is_pair and data.train.text_b is None
    assert len(data.train) == 20 and len(data.validation) == 2
    assert data.train.text_a[0] == "good thing 0" and data.train.labels[0] == 1
    assert data.report.validation_source == ("hf-split" if fmt == "hf" else "file")
    reference = load(write_jsonl(tmp_path / "ref_train.jsonl", TRAIN), write_jsonl(tmp_path / "ref_val.jsonl", VAL))
    assert data.fingerprint == reference.fingerprint


def test_folder_with_train_and_validation_files(tmp_path):
    write_delimited(tmp_path / "train.csv", TRAIN)
    write_delimited(tmp_path / "validation.csv", VAL)
    data = load(tmp_path)
    assert len(data.train) == 20 and len(data.validation) == 2 and data.report.validation_source == "file"


def test_folder_without_validation_splits_off(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", TRAIN)
    data = load(tmp_path)
    assert data.report.validation_source.startswith("split-off")
    assert len(data.train) + len(data.validation) == 20


def test_explicit_validation_overrides_folder(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", TRAIN)
    write_jsonl(tmp_path / "validation.jsonl", VAL)
    other = write_jsonl(tmp_path / "other.jsonl", VAL + VAL)
    assert len(load(tmp_path, other).validation) == 4


def test_saved_hf_dataset_dict_uses_splits(tmp_path):
    data = load(write_hf(tmp_path / "dd", TRAIN, VAL))
    assert len(data.train) == 20 and len(data.validation) == 2 and data.report.validation_source == "hf-split"


def test_hf_classlabel_names_are_kept(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"text": [r["text"] for r in TRAIN], "label": [r["label"] for r in TRAIN]},
                      features=features).save_to_disk(str(tmp_path / "ds"))
    data = load(tmp_path / "ds")
    assert data.label_names == ["neg", "pos"] and data.num_labels == 2


@pytest.fixture
def hub_lists(monkeypatch):
    """The hub's file listing, faked (no network in tests): ``hub_lists(None)`` makes the lookup fail."""
    import huggingface_hub

    def listing(files):
        def dataset_info(self, name, **kwargs):
            if files is None:
                raise ConnectionError("offline")
            return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f, size=size) for f, size in files.items()])
        monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    listing(None)
    return listing


def test_hub_name_over_the_cap_is_refused_before_download(monkeypatch, hub_lists):
    import datasets
    hub_lists({"data/train-0.parquet": 3 * 2**20, "data/test-0.parquet": 2**20, "README.md": 50 * 2**20})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: pytest.fail("downloaded despite the cap"))
    with pytest.raises(DataError, match=msg("'user/big'", "4.00 MB in 2 data files", "max_file_mb=3",
                                            "nothing was downloaded")):
        load("user/big", max_file_mb=3)


def test_hub_split_over_the_cap_is_refused_before_its_rows_are_read(monkeypatch, hub_lists):
    import datasets
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN)})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: dd)
    monkeypatch.setattr(datasets.Dataset, "to_dict", lambda self: pytest.fail("rows read despite the cap"))
    size = dd["train"].data.nbytes
    with pytest.raises(DataError, match=msg("user/cr[train]", f"({size} bytes) of Arrow data", "max_file_mb=0.0001")):
        load("user/cr", max_file_mb=0.0001)


def test_hub_name_failure_is_a_data_error(monkeypatch, hub_lists):
    import datasets

    def fail(name, *a, **k):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=msg("'someuser/no-such-dataset'", "Hugging Face", "Couldn't reach")):
        load("someuser/no-such-dataset")


def test_hub_name_loads_through_load_dataset(monkeypatch, hub_lists):
    import datasets
    hub_lists({"data/train.parquet": 2**20})   # under the cap
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN),
                               "validation": datasets.Dataset.from_list(VAL)})
    monkeypatch.setattr(datasets, "load_dataset", lambda name: dd)
    data = load("user/cr")
    assert len(data.train) == 20 and data.report.validation_source == "hf-split"


# --------------------------------------------------------------------------- tasks and labels
def test_pair_task(tmp_path):
    rows = [{"text_a": f"a {i}", "text_b": f"b {i}", "label": i % 2} for i in range(20)]
    data = load(write_delimited(tmp_path / "t.tsv", rows, "\t"))
    assert data.is_pair and data.train.text_b is not None
    i = data.train.text_a.index("a 3")
    assert data.train.text_b[i] == "b 3" and data.train.labels[i] == 1


def test_string_labels_are_mapped_in_sorted_order(tmp_path):
    names = ["pos", "neg", "neutral"]
    rows = [{"text": f"t {i}", "label": names[i % 3]} for i in range(30)]
    data = load(write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "v.jsonl", rows[:3]))
    assert data.label_names == ["neg", "neutral", "pos"] and data.num_labels == 3
    assert data.validation.labels == [2, 0, 1]


def test_regression_floats(tmp_path):
    rows = [{"text_a": f"a {i}", "text_b": f"b {i}", "label": i / 4} for i in range(20)]
    data = load(write_delimited(tmp_path / "t.csv", rows))
    assert data.task_type == "regression" and data.num_labels == 1 and data.label_names is None
    assert all(isinstance(x, float) for x in data.train.labels)


def test_task_regression_forces_int_labels_to_floats(tmp_path):
    data = load(write_jsonl(tmp_path / "t.jsonl", TRAIN), task="regression")
    assert data.task_type == "regression" and set(data.train.labels) <= {0.0, 1.0}


def test_classification_on_fractional_floats_is_an_error(tmp_path):
    rows = TRAIN[:5] + [{"text": "x", "label": 0.5}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=msg(str(path), "line 6", "column 'label'", "0.5")):
        load(path, task="classification")


def test_non_contiguous_int_labels(tmp_path):
    rows = [{"text": f"t {i}", "label": 5 if i % 2 else 1} for i in range(20)]
    data = load(write_jsonl(tmp_path / "t.jsonl", rows))
    assert data.label_names == ["1", "5"] and set(data.train.labels) | set(data.validation.labels) == {0, 1}


def test_boolean_labels_are_classification(tmp_path):
    rows = [{"text": f"t {i}", "label": bool(i % 2)} for i in range(20)]
    data = load(write_parquet(tmp_path / "t.parquet", rows))
    assert data.task_type == "classification" and data.label_names == ["False", "True"]


# --------------------------------------------------------------------------- splitting
def imbalanced_rows(n0=80, n1=20):
    return [{"text": f"zero {i}", "label": 0} for i in range(n0)] + [{"text": f"one {i}", "label": 1}
                                                                      for i in range(n1)]


def test_split_off_is_deterministic_and_stratified(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", imbalanced_rows())
    a, b = load(path, validation_fraction=0.2), load(path, validation_fraction=0.2)
    assert a.validation.text_a == b.validation.text_a and a.fingerprint == b.fingerprint
    assert Counter(a.validation.labels) == {0: 16, 1: 4} and Counter(a.train.labels) == {0: 64, 1: 16}
    assert not set(a.validation.text_a) & set(a.train.text_a)
    assert a.report.validation_source == "split-off (fraction 0.2, seed 42)"
    c = load(path, validation_fraction=0.2, split_seed=7)
    assert c.validation.text_a != a.validation.text_a


def test_split_off_keeps_identical_texts_on_one_side(tmp_path):
    # 40 texts, each twice or three times (the same label), one text under both labels, and one class whose
    # only rows share their text with the other class
    rows = [{"text": f"t {i}", "label": i % 2} for i in range(40) for _ in range(2 + i % 2)]
    rows += [{"text": "both", "label": 0}, {"text": "both", "label": 1}, {"text": "rare", "label": 0},
             {"text": "rare", "label": 2}]
    data = load(write_jsonl(tmp_path / "t.jsonl", rows), validation_fraction=0.2)
    assert not set(data.validation.text_a) & set(data.train.text_a)
    assert len(data.train) + len(data.validation) == len(rows)
    assert abs(len(data.validation) - 0.2 * len(rows)) <= 3                # whole texts, so about 20 %
    assert set(data.train.labels) == {0, 1, 2}                             # no class loses its training rows
    assert {"both", "rare"} <= set(data.train.text_a)                      # label-conflicting texts stay in train


def test_a_validation_file_sharing_texts_with_train_is_used_as_given_and_reported(tmp_path):
    val = VAL + [{"text": "good thing 3", "label": 1}, {"text": "bad thing 4", "label": 1}]
    data = load(write_jsonl(tmp_path / "t.jsonl", TRAIN), write_jsonl(tmp_path / "v.jsonl", val))
    assert len(data.validation) == 4 and data.report.validation_in_train == 2      # whatever the label
    assert "Warning: 2 of the 4 validation rows have a text (pair) that is also in train" in data.report.summary()
    split_off = load(write_jsonl(tmp_path / "t.jsonl", TRAIN + TRAIN[:4]))
    assert split_off.report.validation_in_train == 0 and "Warning" not in split_off.report.summary()
    assert load(write_jsonl(tmp_path / "t.jsonl", TRAIN), write_jsonl(tmp_path / "v.jsonl", VAL)
                ).report.validation_in_train == 0


def test_subsample_is_seeded_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", imbalanced_rows())
    v = write_jsonl(tmp_path / "v.jsonl", VAL)
    a, b = load(path, v, max_train_examples=10), load(path, v, max_train_examples=10)
    assert len(a.train) == 10 and a.train.text_a == b.train.text_a
    assert Counter(a.train.labels) == {0: 8, 1: 2}
    assert "100 -> 10" in a.report.subsample and "Train subsampled" in a.report.summary()
    assert len(load(path, v, max_train_examples=500).train) == 100


# --------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=msg(str(tmp_path / "nope.jsonl"), "no such file")):
        load(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_missing_label_column(tmp_path, fmt):
    rows = [{"text": r["text"], "lbl": r["label"]} for r in TRAIN]
    path = {"jsonl": write_jsonl, "csv": write_delimited, "parquet": write_parquet}[fmt](tmp_path / f"t.{fmt}", rows)
    where = {"jsonl": "lines 1-20", "csv": "line 1 (header)", "parquet": "row indices 0-19"}[fmt]
    with pytest.raises(DataError, match=msg(str(path), where, "column 'label'", "not found")):
        load(path)


def test_missing_text_column_and_half_pair(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"sentence": "x", "label": 0}])
    with pytest.raises(DataError, match=msg(str(path), "line", "column 'text'", "not found")):
        load(path)
    path = write_delimited(tmp_path / "p.csv", [{"text_a": "x", "label": 0}])
    with pytest.raises(DataError, match=msg(str(path), "line 1", "column 'text_b'", "not found")):
        load(path)


def test_mixing_single_and_pair_columns(tmp_path):
    rows = TRAIN[:3] + [{"text_a": "a", "text_b": "b", "label": 0}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=msg(str(path), "lines 1-4", "'text'", "text_a", "one layout")):
        load(path)


def test_empty_text(tmp_path):
    rows = TRAIN[:4] + [{"text": "   ", "label": 0}] + TRAIN[4:]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=msg(str(path), "line 5", "column 'text'", "whitespace-only")):
        load(path)


def test_empty_text_b_in_csv(tmp_path):
    rows = [{"text_a": "a", "text_b": "b", "label": i % 2} for i in range(6)]
    rows[2]["text_b"] = ""
    path = write_delimited(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=msg(str(path), "line 4", "column 'text_b'", "empty")):
        load(path)


def test_malformed_json_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(TRAIN[0]) + "\n" + json.dumps(TRAIN[1]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=msg(str(path), "line 3", "not valid JSON")):
        load(path)


def test_csv_wrong_number_of_fields_counts_physical_lines(tmp_path):
    path = tmp_path / "t.csv"
    # line 2-3 is one quoted record spanning two physical lines; line 4 has an extra field
    path.write_text('text,label\n"multi\nline text",1\nfine,0\ntoo,many,fields\n', encoding="utf-8")
    with pytest.raises(DataError, match=msg(str(path), "line 5", "expected 2", "got 3")):
        load(path)


def test_csv_quoting_is_handled(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"has, a comma",1\n"has ""quotes""",0\n', encoding="utf-8")
    data = load(path, validation=write_jsonl(tmp_path / "v.jsonl", VAL))
    assert data.train.text_a == ["has, a comma", 'has "quotes"']


def test_tsv_bad_quoting_is_a_malformed_line(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('text\tlabel\nok\t1\n"the " disposable " type .\t0\nfine\t0\n', encoding="utf-8")
    with pytest.raises(DataError, match=msg(str(path), "line 3", "bad quoting")):
        load(path)
    data = load(path, validation=write_jsonl(tmp_path / "v.jsonl", VAL), bad_rows="drop")
    assert data.report.dropped["train"] == {"malformed_line": 1} and data.train.text_a == ["ok", "fine"]


def test_every_row_a_quote_left_open_swallows_is_counted(tmp_path):
    """A field that opens a quote and closes it rows later reads those rows as one field: each of them is
    counted as lost, not one "malformed line" for all."""
    path = tmp_path / "t.tsv"
    rows = [f"row {i}\t{i % 2}" for i in range(30)]
    rows[9] = '"opens a quote\t1'
    rows[19] = 'closes it "wow" here\t0'
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=msg(str(path), "line 11", "lines 11-21 were read as one field")):
        load(path)
    data = load(path, validation=write_jsonl(tmp_path / "v.jsonl", VAL), bad_rows="drop")
    assert data.report.dropped["train"] == {"malformed_line": 11} and len(data.train.text_a) == 19


def test_a_text_longer_than_csvs_own_field_limit_loads(tmp_path):
    path = tmp_path / "t.csv"
    long = "word " * 40_000                                      # 200,000 characters: over csv's 131,072
    path.write_text(f"text,label\n{long},1\nshort,0\n", encoding="utf-8")
    data = load(path, validation=write_jsonl(tmp_path / "v.jsonl", VAL))
    assert data.train.text_a[0] == long


def test_a_lone_surrogate_is_a_bad_row_not_a_crash(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine", "label": 1}\n{"text": "bad \\ud83d emoji", "label": 0}\n'
                    '{"text": "also fine", "label": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=msg(str(path), "line 2", "lone UTF-16 surrogate")):
        load(path)
    data = load(path, validation=write_jsonl(tmp_path / "v.jsonl", VAL), bad_rows="drop")
    assert data.report.dropped["train"] == {"bad_text": 1} and data.train.text_a == ["fine", "also fine"]


@pytest.mark.parametrize("labels", [["01", "1"], ["1_0", "10"]])
def test_labels_that_are_not_plain_numbers_are_never_merged_into_one(tmp_path, labels):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{labels[i % 2]}\n" for i in range(10)), encoding="utf-8")
    with pytest.raises(DataError, match="labels must share one type"):   # not one class, silently
        load(path)


def test_zero_padded_labels_are_names(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f"row {i},0{i % 3}\n" for i in range(12)), encoding="utf-8")
    val = tmp_path / "v.csv"
    val.write_text("text,label\na,00\nb,02\n", encoding="utf-8")
    data = load(path, validation=str(val))
    assert data.label_names == ["00", "01", "02"] and data.validation.labels == [0, 2]


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\ngood,1\ncaf\xe9 bad,0\n")
    with pytest.raises(DataError, match=msg(str(path), "line 3", "not valid UTF-8")):
        load(path)


@pytest.mark.parametrize("label", [None, ""])
def test_null_label(tmp_path, label):
    rows = TRAIN[:2] + [{"text": "x", "label": label}] + TRAIN[2:]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=msg(str(path), "line 3", "column 'label'", "missing")):
        load(path)


def test_missing_label_key_in_one_line(tmp_path):
    rows = TRAIN[:2] + [{"text": "x"}] + TRAIN[2:]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=msg(str(path), "line 3", "column 'label'", "missing")):
        load(path)


def test_null_label_parquet_names_row_index(tmp_path):
    rows = TRAIN[:2] + [{"text": "x", "label": None}] + TRAIN[2:]
    path = write_parquet(tmp_path / "t.parquet", rows)
    with pytest.raises(DataError, match=msg(str(path), "row index 2", "column 'label'", "missing")):
        load(path)


def test_fewer_than_two_classes(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t {i}", "label": 1} for i in range(5)])
    with pytest.raises(DataError, match=msg(str(path), "lines 1-5", "column 'label'", "at least 2 classes")):
        load(path)


def test_unseen_validation_label(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", TRAIN)
    val = write_jsonl(tmp_path / "v.jsonl", VAL + [{"text": "odd", "label": 7}])
    with pytest.raises(DataError, match=msg(str(val), "line 3", "column 'label'", "label 7", "training data")):
        load(train, val)


def test_mixed_label_types(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", TRAIN[:3] + [{"text": "x", "label": "pos"}])
    with pytest.raises(DataError, match=msg(str(path), "line 4", "column 'label'", "one type")):
        load(path)


def test_file_over_size_cap(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", TRAIN)
    size = path.stat().st_size
    with pytest.raises(DataError, match=msg(str(path), f"({size} bytes)", "max_file_mb=0.0001")):
        load(path, max_file_mb=0.0001)


def test_csv_without_header_data_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=msg(str(path), "line 1", "header")):
        load(path)


# --------------------------------------------------------------------------- drop mode
def test_drop_mode_counts_each_reason(tmp_path):
    train = tmp_path / "t.jsonl"
    lines = [json.dumps(r) for r in TRAIN] + [
        "{broken", json.dumps({"text": "", "label": 1}), json.dumps({"text": "x", "label": None}),
        json.dumps({"text": "y"}), "", json.dumps({"text": "z", "label": 0})]
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    val = write_jsonl(tmp_path / "v.jsonl", VAL + [{"text": "odd", "label": 9}, {"text": "", "label": 0}])
    data = load(train, val, bad_rows="drop")
    assert data.report.dropped == {
        "train": {"malformed_line": 1, "empty_text": 1, "missing_label": 2},
        "validation": {"unseen_label": 1, "empty_text": 1}}
    assert data.report.rows_read == {"train": 25, "validation": 4}
    assert data.report.blank_lines["train"] == 1
    assert len(data.train) == 21 and len(data.validation) == 2
    summary = data.report.summary()
    assert "malformed_line 1" in summary and "unseen_label 1" in summary and "blank lines" in summary


def test_drop_mode_still_raises_file_level_problems(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t {i}", "label": 1} for i in range(5)]
                       + [{"text": "", "label": 0}])
    with pytest.raises(DataError, match="at least 2 classes"):
        load(path, bad_rows="drop")
    with pytest.raises(DataError, match="max_file_mb"):
        load(path, bad_rows="drop", max_file_mb=0.0001)


# --------------------------------------------------------------------------- fingerprint
def test_fingerprint_stable_across_formats_and_sensitive_to_labels(tmp_path):
    v = VAL
    fp_jsonl = load(write_jsonl(tmp_path / "t.jsonl", TRAIN), write_jsonl(tmp_path / "v.jsonl", v)).fingerprint
    fp_csv = load(write_delimited(tmp_path / "t.csv", TRAIN), write_delimited(tmp_path / "v.csv", v)).fingerprint
    fp_pq = load(write_parquet(tmp_path / "t.parquet", TRAIN), write_parquet(tmp_path / "v.parquet", v)).fingerprint
    assert fp_jsonl == fp_csv == fp_pq and re.fullmatch(r"[0-9a-f]{64}", fp_jsonl)
    changed = [dict(r) for r in TRAIN]
    changed[3]["label"] = 0
    fp_changed = load(write_jsonl(tmp_path / "t2.jsonl", changed), write_jsonl(tmp_path / "v2.jsonl", v)).fingerprint
    assert fp_changed != fp_jsonl


# --------------------------------------------------------------------------- bundled dataset
def test_bundled_dataset_loads():
    folder = bundled_dataset_path()
    assert (folder / "README.md").is_file()
    data = load(folder)
    assert data.num_labels == 2 and data.label_names == ["0", "1"] and not data.is_pair
    assert len(data.train) == 3017 and len(data.validation) == 754
    assert data.report.dropped == {"train": {}, "validation": {}}
