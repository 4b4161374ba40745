"""The data layer: load a text-classification/regression dataset described by :class:`DataConfig`.

Sources: JSONL, CSV, TSV or Parquet files, a folder holding ``train.*`` (and optionally ``validation.*``), a
Hugging Face ``datasets`` folder saved with ``save_to_disk``, or a Hugging Face dataset name. Every problem is a
:class:`DataError` that names the file, the line (row index for Parquet/HF) and the column. With
``bad_rows="drop"`` row-level problems are dropped and counted in :class:`LoadReport`; nothing is dropped silently.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from .config import DataConfig

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
                ".parquet": "parquet", ".pq": "parquet"}
SPLITS = ("train", "validation")
# the files of a Hugging Face hub dataset repository that hold its rows (what loading it downloads)
HUB_DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".tsv", ".arrow")
HUB_LOOKUP_TIMEOUT_S = 30.0
# reasons a row can be dropped (bad_rows="drop"); everything else is file-level and always raises
ROW_REASONS = ("malformed_line", "empty_text", "bad_text", "missing_label", "bad_label", "unseen_label")


class DataError(ValueError):
    """Unusable data; the message names the file, the line (or row index) and the column."""


# --------------------------------------------------------------------------- public containers
@dataclass
class Split:
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: list[int]) -> "Split":
        """A new split holding the given rows, in the given order."""
        return Split([self.text_a[i] for i in indices],
                     None if self.text_b is None else [self.text_b[i] for i in indices],
                     [self.labels[i] for i in indices])


@dataclass
class LoadReport:
    rows_read: dict[str, int]
    dropped: dict[str, dict[str, int]]
    validation_source: str
    sources: dict[str, str] = field(default_factory=dict)       # split -> file / HF split it came from
    blank_lines: dict[str, int] = field(default_factory=dict)   # skipped blank lines per split
    subsample: str | None = None                                # how train was subsampled, if it was
    final_rows: dict[str, int] = field(default_factory=dict)    # rows in the returned splits
    validation_in_train: int = 0                                # validation rows whose text (pair) is a train row's

    def summary(self) -> str:
        parts = [f"Read {self._per_split(self.rows_read)} rows "
                 f"({', '.join(f'{k}: {v}' for k, v in self.sources.items())}); "
                 f"validation source: {self.validation_source}."]
        if any(self.blank_lines.values()):
            parts.append(f"Skipped blank lines: {self._per_split(self.blank_lines)}.")
        drops = {s: r for s, r in self.dropped.items() if r}
        if drops:
            parts.append("Dropped rows: " + "; ".join(
                f"{s}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.items())) for s, r in drops.items()) + ".")
        if self.subsample:
            parts.append(f"Train subsampled: {self.subsample}.")
        if self.final_rows:
            parts.append(f"Final: {self._per_split(self.final_rows)} rows.")
        if self.validation_in_train:
            parts.append(f"Warning: {overlap_warning(self.validation_in_train, self.final_rows['validation'])}.")
        return " ".join(parts)

    @staticmethod
    def _per_split(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items())


def overlap_warning(validation_in_train: int, validation_rows: int) -> str:
    """What a user is told when validation rows share their text with train rows."""
    return (f"{validation_in_train} of the {validation_rows} validation rows have a text (pair) that is also in "
            "train: their scores measure texts the models trained on (a validation file is used as given)")


@dataclass
class TaskData:
    train: Split
    validation: Split
    task_type: Literal["classification", "regression"]
    label_names: list[str] | None
    num_labels: int
    is_pair: bool
    fingerprint: str
    report: LoadReport


def bundled_dataset_path() -> Path:
    """Folder of the bundled CR customer-review dataset (train.jsonl, validation.jsonl, README.md)."""
    return Path(__file__).resolve().parent / "data" / "bundled" / "cr"


# --------------------------------------------------------------------------- raw tables
@dataclass
class _Row:
    loc: int                          # 1-based line, or 0-based row index
    values: dict[str, Any] | None     # None when the line itself is malformed
    problem: str | None = None


@dataclass
class _Table:
    """Rows as read from one source, before any validation."""

    name: str
    unit: Literal["line", "row index"]
    rows: list[_Row]
    columns: list[str]
    origin: str = "file"              # "file" or "hf-split"
    blank_lines: int = 0
    class_names: list[str] | None = None   # from an HF ClassLabel feature
    header_line: bool = False              # CSV/TSV: columns come from line 1

    def where(self, loc: int, column: str | None = None) -> str:
        text = f"{self.name}, {self.unit} {loc}"
        return text if column is None else f"{text}, column {column!r}"

    def span(self) -> str:
        """Where a whole-file problem lies (e.g. a missing column)."""
        if self.header_line:
            return f"{self.name}, line 1 (header)"
        if not self.rows:
            return f"{self.name} (no rows)"
        unit = "lines" if self.unit == "line" else "row indices"
        return f"{self.name}, {unit} {self.rows[0].loc}-{self.rows[-1].loc}"


@dataclass
class _Problem:
    loc: int
    reason: str
    message: str


# --------------------------------------------------------------------------- reading files
def _read_bytes(path: Path, cfg: DataConfig) -> bytes:
    _check_size(path, cfg)
    return path.read_bytes()


def _check_size(path: Path, cfg: DataConfig) -> None:
    size = path.stat().st_size
    if size > cfg.max_file_mb * 1024 * 1024:
        raise DataError(f"{path}: file is {size / 1024 / 1024:.2f} MB ({size} bytes), over the cap "
                        f"data.max_file_mb={cfg.max_file_mb:g} MB")


def _decode(data: bytes, path: Path) -> str:
    """UTF-8 (a leading BOM is removed); a bad byte is reported with its line.

    Always file-level, also with bad_rows='drop': a file in another encoding would otherwise lose exactly its
    non-ASCII rows.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at byte "
                        f"{err.start - line_start + 1} of the line); re-save the file as UTF-8") from None


def _read_jsonl(path: Path, cfg: DataConfig) -> _Table:
    lines = _decode(_read_bytes(path, cfg), path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    table = _Table(str(path), "line", [], [])
    seen_columns: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            table.blank_lines += 1
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            table.rows.append(_Row(number, None, f"not valid JSON ({err.msg} at character {err.pos + 1}); "
                                                 "expected one JSON object per line"))
            continue
        except RecursionError:
            table.rows.append(_Row(number, None, "JSON nested too deeply; expected one flat JSON object per line"))
            continue
        if not isinstance(obj, dict):
            table.rows.append(_Row(number, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        table.columns.extend(k for k in obj if k not in seen_columns)   # a set: a 1M-key line stays linear
        seen_columns.update(obj)
        table.rows.append(_Row(number, obj))
    return table


def _read_delimited(path: Path, cfg: DataConfig, delimiter: str) -> _Table:
    """CSV/TSV with a header row and standard (double-quote) quoting; bad quoting is a malformed line."""
    text = _decode(_read_bytes(path, cfg), path)
    # a field may be as long as the file may be (csv's own limit, 128 KiB, would call a long text bad quoting)
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind = "tab" if delimiter == "\t" else "comma"
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise DataError(f"{path}, line 1 (header): cannot parse: {err}") from None
    if not header:
        raise DataError(f"{path}, line 1: a header row with the column names is required")
    duplicates = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicates:
        raise DataError(f"{path}, line 1 (header): duplicate column name(s) {duplicates}")
    table = _Table(str(path), "line", [], list(header), header_line=True)
    while True:
        start = reader.line_num + 1   # records may span several physical lines (quoted newlines)
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            end = reader.line_num
            span = f" (the quote runs to the end of the file, line {end})" if "end of data" in str(err) else \
                f" (lines {start}-{end} were read as one field)" if end > start else ""
            table.rows.append(_Row(start, None, f"bad quoting ({err}){span}; a field that starts with a double "
                                                "quote must be quoted CSV-style, with inner quotes doubled"))
            # every line the open quote swallowed is a row lost to it: counted, never dropped unsaid
            table.rows += [_Row(line, None, f"inside the bad quoting that starts on line {start}")
                           for line in range(start + 1, end + 1)]
            continue
        if not fields:
            table.blank_lines += 1
        elif len(fields) != len(header):
            table.rows.append(_Row(start, None, f"expected {len(header)} {kind}-separated fields "
                                                f"(as in the header), got {len(fields)}"))
        else:
            table.rows.append(_Row(start, dict(zip(header, fields))))
    return table


def _read_parquet(path: Path, cfg: DataConfig) -> _Table:
    import pyarrow.parquet as pq

    _check_size(path, cfg)
    try:
        arrow = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read as Parquet: {err}") from None
    rows = [_Row(i, record) for i, record in enumerate(arrow.to_pylist())]
    return _Table(str(path), "row index", rows, list(arrow.column_names))


def format_for(path: Path, fmt: str) -> str | None:
    """The format a data file is read in: ``data.format`` when it names one, else its extension's (None
    when the extension names none)."""
    return fmt if fmt not in ("auto", "hf") else FILE_FORMATS.get(Path(path).suffix.lower())


def _file_format(path: Path, cfg: DataConfig) -> str:
    fmt = format_for(path, cfg.format)
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                        f"use one of {sorted(FILE_FORMATS)} or set data.format")
    return fmt


def _read_file(path: Path, cfg: DataConfig) -> _Table:
    fmt = _file_format(path, cfg)
    if fmt == "jsonl":
        return _read_jsonl(path, cfg)
    if fmt == "parquet":
        return _read_parquet(path, cfg)
    return _read_delimited(path, cfg, "\t" if fmt == "tsv" else ",")


# --------------------------------------------------------------------------- Hugging Face datasets
def _is_saved_hf(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _hf_table(ds: Any, name: str, cfg: DataConfig) -> _Table:
    _check_split_size(ds, name, cfg)
    columns = list(ds.column_names)
    data = ds.to_dict()
    rows = [_Row(i, {c: data[c][i] for c in columns}) for i in range(len(ds))]
    class_names = None
    feature = ds.features.get(cfg.label_column)
    if feature is not None and type(feature).__name__ == "ClassLabel":
        class_names = list(feature.names)
        for row in rows:  # ClassLabel uses -1 for "no label"
            if row.values.get(cfg.label_column) == -1:
                row.values[cfg.label_column] = None
    return _Table(name, "row index", rows, columns, origin="hf-split", class_names=class_names)


def _hf_splits(obj: Any, name: str, cfg: DataConfig, want: str) -> dict[str, _Table]:
    """Tables from a Dataset (used as ``want``) or a DatasetDict (its configured splits)."""
    if not hasattr(obj, "keys"):
        return {want: _hf_table(obj, name, cfg)}
    available = list(obj.keys())
    out = {}
    for split, key in (("train", cfg.hf_train_split), ("validation", cfg.hf_validation_split)):
        if key in available:
            out[split] = _hf_table(obj[key], f"{name}[{key}]", cfg)
    if want not in out:
        key = cfg.hf_train_split if want == "train" else cfg.hf_validation_split
        setting = "hf_train_split" if want == "train" else "hf_validation_split"
        raise DataError(f"{name}: no split {key!r} (data.{setting}); available splits: {available}")
    return out


def _open_saved_hf(folder: Path, cfg: DataConfig, want: str) -> dict[str, _Table]:
    for arrow_file in sorted(folder.rglob("*.arrow")):
        _check_size(arrow_file, cfg)
    try:
        import datasets
        obj = datasets.load_from_disk(str(folder))
    except Exception as err:
        raise DataError(f"{folder}: cannot load as a saved Hugging Face dataset: {type(err).__name__}: {err}") \
            from None
    return _hf_splits(obj, str(folder), cfg, want)


def _check_split_size(ds: Any, name: str, cfg: DataConfig) -> None:
    """A split's Arrow data against the file cap, before its rows are read into memory (Arrow tables of
    loaded datasets are memory-mapped, so this costs no reading)."""
    size = ds.data.nbytes
    if size > cfg.max_file_mb * 1024 * 1024:
        raise DataError(f"{name}: the split holds {size / 1024 / 1024:.2f} MB ({size} bytes) of Arrow data, over "
                        f"the cap data.max_file_mb={cfg.max_file_mb:g} MB")


def _check_hub_size(name: str, cfg: DataConfig) -> None:
    """The hub's stated size of a dataset repository's data files against the cap, before anything is
    downloaded. A hub that cannot say (offline, unreachable, no such dataset) leaves the check to the
    loaded splits (:func:`_check_split_size`) and the error to ``load_dataset``."""
    try:
        from huggingface_hub import HfApi
        info = HfApi().dataset_info(name, files_metadata=True, timeout=HUB_LOOKUP_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any lookup failure: load_dataset reports it in its own words
        return
    files = [f for f in info.siblings or [] if f.rfilename.lower().endswith(HUB_DATA_SUFFIXES)]
    total = sum(f.size or 0 for f in files)
    if total > cfg.max_file_mb * 1024 * 1024:
        raise DataError(f"{name!r}: the hub lists {total / 1024 / 1024:.2f} MB in {len(files)} data files, over the "
                        f"cap data.max_file_mb={cfg.max_file_mb:g} MB; nothing was downloaded")


def _open_hub(name: str, cfg: DataConfig, want: str) -> dict[str, _Table]:
    _check_hub_size(name, cfg)
    try:
        import datasets
        obj = datasets.load_dataset(name)
    except Exception as err:
        raise DataError(f"{name!r} is not a local file or folder, and loading it as a Hugging Face dataset "
                        f"failed: {type(err).__name__}: {err}") from None
    return _hf_splits(obj, name, cfg, want)


def _looks_like_hub_name(spec: str) -> bool:
    return (not spec.startswith((".", "/", "~")) and "\\" not in spec and spec.count("/") <= 1
            and Path(spec).suffix.lower() not in FILE_FORMATS)


# --------------------------------------------------------------------------- resolving sources
def _open_folder(folder: Path, cfg: DataConfig, want: str) -> dict[str, _Table]:
    """A folder holding train.<ext> and optionally validation.<ext>."""
    out = {}
    for split in SPLITS:
        found = [folder / f"{split}{ext}" for ext in FILE_FORMATS if (folder / f"{split}{ext}").is_file()]
        if len(found) > 1:
            raise DataError(f"{folder}: several {split} files {[p.name for p in found]}; keep only one")
        if found and (split == want or want == "train"):
            out[split] = _read_file(found[0], cfg)
    if want not in out:
        raise DataError(f"{folder}: no {want} file (expected {want}.jsonl, .csv, .tsv or .parquet)")
    return out


def _open(spec: str, cfg: DataConfig, want: str) -> dict[str, _Table]:
    """The tables a data spec provides: always ``want``, and when reading train, a validation split if present."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if cfg.format == "hf" or _is_saved_hf(path):
            return _open_saved_hf(path, cfg, want)
        return _open_folder(path, cfg, want)
    if path.is_file():
        return {want: _read_file(path, cfg)}
    if cfg.format == "hf" or (cfg.format == "auto" and _looks_like_hub_name(spec)):
        return _open_hub(spec, cfg, want)
    option = {"train": ", or --data on the command line", "validation": ", or --validation"}.get(want, "")
    raise DataError(f"{spec}: no such file or folder (data.{want}{option})")


def _resolve(cfg: DataConfig) -> tuple[_Table, _Table | None]:
    if not cfg.train:
        raise DataError("data.train is not set: give a file, a folder or a Hugging Face dataset name")
    tables = _open(cfg.train, cfg, "train")
    if cfg.validation:
        return tables["train"], _open(cfg.validation, cfg, "validation")["validation"]
    return tables["train"], tables.get("validation")


# --------------------------------------------------------------------------- columns and rows
def _text_columns(table: _Table, cfg: DataConfig) -> tuple[str, ...]:
    """(text,) or (text_a, text_b), from the columns present; a mixture is an error."""
    single = cfg.text_column in table.columns
    pair = [c for c in (cfg.text_a_column, cfg.text_b_column) if c in table.columns]
    if single and pair:
        raise DataError(f"{table.span()}: has both the single-sentence column {cfg.text_column!r} and pair "
                        f"column(s) {pair}; use one layout (data.text_column or data.text_a_column + "
                        "data.text_b_column)")
    if single:
        return (cfg.text_column,)
    if len(pair) == 2:
        return cfg.text_a_column, cfg.text_b_column
    if pair:
        missing = ({cfg.text_a_column, cfg.text_b_column} - set(pair)).pop()
        setting = "data.text_a_column and data.text_b_column"
    else:
        missing, setting = cfg.text_column, "data.text_column (data.text_a_column + data.text_b_column for pairs)"
    raise DataError(f"{table.span()}, column {missing!r}: column not found (columns present: {table.columns}); "
                    f"name the text column(s) with {setting} in the config")


def _require_rows(table: _Table) -> None:
    """A source with no rows at all (an empty file) is said so, not reported as missing its columns."""
    if not table.rows and not table.columns:
        blank = f" but {table.blank_lines} blank line(s)" if table.blank_lines else ""
        raise DataError(f"{table.name}: empty, no rows{blank}; expected one example per line")


def _require_label_column(table: _Table, column: str) -> None:
    if column not in table.columns:
        raise DataError(f"{table.span()}, column {column!r}: column not found "
                        f"(columns present: {table.columns}); name the label column with data.label_column "
                        "in the config")


def _row_problem(table: _Table, row: _Row, text_cols: tuple[str, ...], label_col: str) -> _Problem | None:
    if row.values is None:
        return _Problem(row.loc, "malformed_line", f"{table.where(row.loc)}: {row.problem}")
    for col in text_cols:
        text = row.values.get(col)
        if text is not None and not isinstance(text, str):
            return _Problem(row.loc, "bad_text", f"{table.where(row.loc, col)}: text must be a string, "
                                                 f"got {type(text).__name__} {text!r}")
        if text is None or not text.strip():
            what = "missing text" if text is None else "empty or whitespace-only text"
            return _Problem(row.loc, "empty_text", f"{table.where(row.loc, col)}: {what}")
        if not _is_encodable(text):
            return _Problem(row.loc, "bad_text", f"{table.where(row.loc, col)}: text holds a lone UTF-16 surrogate "
                                                 "(an escape such as \\ud83d without its pair), which is no character")
    label = row.values.get(label_col)
    if _is_missing_label(label):
        return _Problem(row.loc, "missing_label", f"{table.where(row.loc, label_col)}: missing (null/empty/NaN) label")
    if _label_kind(label) is None:
        return _Problem(row.loc, "bad_label", f"{table.where(row.loc, label_col)}: unusable label {label!r}")
    return None


def _is_missing_label(label: Any) -> bool:
    """null, empty or NaN, also as the text 'nan'/'NaN' that CSV writers leave for a missing value (which
    would otherwise become a class of its own)."""
    if label is None or label == "":
        return True
    if isinstance(label, float):
        return math.isnan(label)
    return isinstance(label, str) and label.strip().lower() == "nan"


def _settle(problems: list[_Problem], split: str, cfg: DataConfig, report: LoadReport) -> None:
    """Raise the first problem, or count every problem as dropped (bad_rows='drop')."""
    if not problems:
        return
    if cfg.bad_rows == "error":
        raise DataError(min(problems, key=lambda p: p.loc).message
                        + " (set data.bad_rows='drop' to drop and count such rows)")
    counts = report.dropped.setdefault(split, {})
    for p in problems:
        counts[p.reason] = counts.get(p.reason, 0) + 1


def _clean_rows(table: _Table, text_cols: tuple[str, ...], cfg: DataConfig, split: str,
                report: LoadReport) -> list[_Row]:
    problems, good = [], []
    for row in table.rows:
        problem = _row_problem(table, row, text_cols, cfg.label_column)
        (good if problem is None else problems).append(row if problem is None else problem)
    _settle(problems, split, cfg, report)
    return good


# --------------------------------------------------------------------------- labels
def _label_kind(value: Any) -> tuple[str, Any] | None:
    """("bool"|"int"|"float"|"str", value); numeric strings (CSV) count as numbers. None if unusable."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return ("int", int(value)) if value.is_integer() else ("float", value)
    if isinstance(value, str):
        if not _is_encodable(value):
            return None
        text = value.strip()
        if _CANONICAL_INT.fullmatch(text):
            return "int", int(text)
        if not _CANONICAL_NUMBER.fullmatch(text):
            return "str", value   # "01", "1_0", "3+": names, not numbers (int() would merge "01" with "1")
        number = float(text)
        return _label_kind(number) if math.isfinite(number) else ("str", value)
    return None


# numbers as CSV writers write them: no leading zeros, no Python-only underscores
_CANONICAL_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_CANONICAL_NUMBER = re.compile(r"[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class _LabelScheme:
    task_type: Literal["classification", "regression"]
    kind: str                           # "bool", "int", "str" (classification) or "number"
    ids: dict[Any, int] | None          # value -> id for classification
    names: list[str] | None


def _infer_scheme(table: _Table, rows: list[_Row], cfg: DataConfig) -> _LabelScheme:
    col = cfg.label_column
    kinds: dict[str, int] = {}
    values: set[Any] = set()
    for row in rows:
        kind, value = _label_kind(row.values[col])
        family = "number" if kind in ("int", "float") else kind
        first_family = next(iter(kinds), family)
        if family != first_family:
            raise DataError(f"{table.where(row.loc, col)}: label {row.values[col]!r} is {family} but the label at "
                            f"{table.unit} {kinds[first_family]} is {first_family}; labels must share one type")
        kinds.setdefault(family, row.loc)
        if kind == "float" and cfg.task == "classification":
            raise DataError(f"{table.where(row.loc, col)}: label {value!r} is not an integer but "
                            "data.task='classification'")
        values.add(value)
    family = next(iter(kinds), "number")
    regression = cfg.task == "regression" or (cfg.task == "auto" and any(isinstance(v, float) for v in values)
                                              and family == "number")
    if regression:
        if family != "number":
            raise DataError(f"{table.span()}, column {col!r}: data.task='regression' needs numeric labels, "
                            f"found {family} labels")
        return _LabelScheme("regression", "number", None, None)
    return _class_scheme(table, family, values, col)


def _class_scheme(table: _Table, family: str, values: set[Any], col: str) -> _LabelScheme:
    if len(values) < 2:
        raise DataError(f"{table.span()}, column {col!r}: the training data has {len(values)} distinct "
                        f"label(s) {sorted(values, key=str)}; classification needs at least 2 classes")
    kind = "int" if family == "number" else family
    if kind == "int" and table.class_names:
        bad = sorted(v for v in values if not 0 <= v < len(table.class_names))
        if bad:
            raise DataError(f"{table.span()}, column {col!r}: label ids {bad} outside the ClassLabel names")
        return _LabelScheme("classification", kind, {i: i for i in range(len(table.class_names))},
                            list(table.class_names))
    ordered = sorted(values)
    return _LabelScheme("classification", kind, {v: i for i, v in enumerate(ordered)}, [str(v) for v in ordered])


def _map_labels(table: _Table, rows: list[_Row], scheme: _LabelScheme, cfg: DataConfig, split: str,
                report: LoadReport) -> tuple[list[_Row], list[int] | list[float]]:
    col = cfg.label_column
    kept, labels, problems = [], [], []
    for row in rows:
        raw = row.values[col]
        kind, value = _label_kind(raw)
        if scheme.task_type == "regression":
            if kind in ("int", "float"):
                kept.append(row)
                labels.append(float(value))
            else:
                problems.append(_Problem(row.loc, "bad_label", f"{table.where(row.loc, col)}: label {raw!r} is "
                                                               "not a number (regression task)"))
            continue
        key = raw if scheme.kind == "str" else value
        if (kind == scheme.kind) and key in scheme.ids:
            kept.append(row)
            labels.append(scheme.ids[key])
        else:
            problems.append(_Problem(row.loc, "unseen_label", f"{table.where(row.loc, col)}: label {raw!r} does "
                                     f"not occur in the training data (training labels: {scheme.names})"))
    _settle(problems, split, cfg, report)
    return kept, labels


def _to_split(rows: list[_Row], labels: list, text_cols: tuple[str, ...]) -> Split:
    text_a = [r.values[text_cols[0]] for r in rows]
    text_b = [r.values[text_cols[1]] for r in rows] if len(text_cols) == 2 else None
    return Split(text_a, text_b, labels)


# --------------------------------------------------------------------------- splitting
def _groups(labels: Sequence[Any], stratify: bool) -> list[list[int]]:
    if not stratify:
        return [list(range(len(labels)))]
    by_label: dict[Any, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    return [by_label[k] for k in sorted(by_label)]


def _unit_groups(labels: Sequence[Any], stratify: bool, keys: Sequence[Any] | None) -> list[list[list[int]]]:
    """The rows as units that are held out or kept whole (rows sharing a key, else each row alone), grouped
    by class when stratified. A unit whose rows disagree on the label is in no group: it is always kept, so
    that no class can lose its last training row to another class's hold-out."""
    rows_of: dict[Any, list[int]] = {}
    for i, key in enumerate(keys if keys is not None else range(len(labels))):
        rows_of.setdefault(key, []).append(i)
    units = list(rows_of.values())
    if not stratify:
        return [units]
    by_label: dict[Any, list[list[int]]] = defaultdict(list)
    for unit in units:
        if len({labels[i] for i in unit}) == 1:
            by_label[labels[unit[0]]].append(unit)
    return [by_label[k] for k in sorted(by_label)]


def _first_units(units: list[list[int]], quota: int) -> list[int]:
    """The rows of the leading units that fit in ``quota`` rows (a unit that would overshoot is passed over)."""
    rows: list[int] = []
    for unit in units:
        if len(rows) == quota:
            break
        if len(rows) + len(unit) <= quota:
            rows.extend(unit)
    return rows


def holdout_indices(labels: Sequence[Any], fraction: float, seed: int | str, stratify: bool,
                    max_rows: int | None = None, keys: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """Seeded (stratified) hold-out of ``fraction`` of the rows, at most ``max_rows`` of them (fewer per
    class in proportion); every class keeps at least one row. Rows with equal ``keys`` (e.g. identical
    texts) fall on one side together; without keys, or with distinct keys, each row is split alone.
    Returns (kept, held), both sorted."""
    rng = random.Random(seed)
    if max_rows is not None and len(labels) * fraction > max_rows:
        fraction = max_rows / len(labels)
    groups = _unit_groups(labels, stratify, keys)
    for group in groups:
        rng.shuffle(group)
    sizes = [sum(len(unit) for unit in group) for group in groups]
    quotas = [min(int(size * fraction + 0.5), size - 1) for size in sizes]
    target = min(round(len(labels) * fraction), max_rows if max_rows is not None else len(labels))
    if (max_rows is not None and sum(quotas) > max_rows) or (not sum(quotas) and target):
        # many small classes: rounding each class's share overshoots the cap, or holds out nothing at all
        quotas = _largest_remainder(sizes, target, caps=[size - 1 for size in sizes])
    held = [i for group, quota in zip(groups, quotas) for i in _first_units(group, quota)]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def _largest_remainder(sizes: Sequence[int], total: int, caps: Sequence[int] | None = None) -> list[int]:
    """``total`` shared out in proportion to ``sizes`` (whole numbers, the largest remainders rounded up
    first), none above its cap (a group's own size by default)."""
    caps = list(caps if caps is not None else sizes)
    total = min(total, sum(caps))
    exact = [total * size / sum(sizes) for size in sizes]
    quotas = [min(int(x), cap) for x, cap in zip(exact, caps)]
    while sum(quotas) < total:
        room = [i for i in range(len(sizes)) if quotas[i] < caps[i]]
        for i in sorted(room, key=lambda i: (quotas[i] - exact[i], i))[: total - sum(quotas)]:
            quotas[i] += 1
    return quotas


def text_keys(split: Split) -> list[Any]:
    """Each row's text (its pair for sentence-pair data): rows with equal keys are one text."""
    return list(zip(split.text_a, split.text_b) if split.text_b is not None else split.text_a)


def split_off_validation(train: Split, fraction: float, seed: int, stratify: bool) -> tuple[Split, Split]:
    """Seeded (stratified) hold-out of ``fraction`` of train; every class keeps at least one train row, and
    identical texts (pairs) stay on one side, so the scored split holds no text the student trained on."""
    kept, held = holdout_indices(train.labels, fraction, seed, stratify, keys=text_keys(train))
    if not held:
        raise DataError(f"cannot split off a validation set: {len(train)} training rows x "
                        f"data.validation_fraction={fraction} gives no rows; give data.validation instead")
    return train.take(kept), train.take(held)


def subsample(split: Split, n: int, seed: int, stratify: bool) -> Split:
    """Seeded subsample of ``n`` rows (proportional per class when stratified), original order kept."""
    rng = random.Random(f"{seed}:subsample")
    groups = _groups(split.labels, stratify)
    quotas = _largest_remainder([len(g) for g in groups], n)
    picked = [i for g, q in zip(groups, quotas) for i in rng.sample(g, q)]
    return split.take(sorted(picked))


# --------------------------------------------------------------------------- fingerprint
def fingerprint(train: Split, validation: Split, task_type: str, label_names: list[str] | None) -> str:
    """sha256 of the content: texts, labels, task type and label names (not file paths or formats)."""
    h = hashlib.sha256()
    h.update(json.dumps({"task_type": task_type, "label_names": label_names}, sort_keys=True).encode())
    for name, split in (("train", train), ("validation", validation)):
        h.update(f"\n#{name}\n".encode())
        for i in range(len(split)):
            b = None if split.text_b is None else split.text_b[i]
            h.update(json.dumps([split.text_a[i], b, split.labels[i]], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- entry point
def load_task_data(cfg: DataConfig) -> TaskData:
    """Read, validate, split and fingerprint the dataset described by ``cfg``."""
    train_table, val_table = _resolve(cfg)
    report = LoadReport(rows_read={"train": len(train_table.rows), "validation": 0},
                        dropped={s: {} for s in SPLITS}, validation_source="file",
                        sources={"train": train_table.name}, blank_lines={"train": train_table.blank_lines})
    _require_rows(train_table)
    text_cols = _text_columns(train_table, cfg)
    _require_label_column(train_table, cfg.label_column)
    train_rows = _clean_rows(train_table, text_cols, cfg, "train", report)
    if not train_rows:
        raise DataError(f"{train_table.span()}: no usable training rows")
    scheme = _infer_scheme(train_table, train_rows, cfg)
    train_rows, train_labels = _map_labels(train_table, train_rows, scheme, cfg, "train", report)
    train = _to_split(train_rows, train_labels, text_cols)
    stratify = scheme.task_type == "classification"

    if val_table is not None:
        validation = _load_validation(val_table, text_cols, scheme, cfg, report)
    else:
        train, validation = split_off_validation(train, cfg.validation_fraction, cfg.split_seed, stratify)
        report.validation_source = f"split-off (fraction {cfg.validation_fraction}, seed {cfg.split_seed})"

    if cfg.max_train_examples is not None and len(train) > cfg.max_train_examples:
        before = len(train)
        train = subsample(train, cfg.max_train_examples, cfg.split_seed, stratify)
        report.subsample = (f"{before} -> {len(train)} rows (data.max_train_examples, seed {cfg.split_seed}"
                            f"{', stratified' if stratify else ''})")
        if stratify and len(set(train.labels)) < 2:
            raise DataError(f"data.max_train_examples={cfg.max_train_examples} leaves fewer than 2 classes")
    report.final_rows = {"train": len(train), "validation": len(validation)}
    trained = set(text_keys(train))
    report.validation_in_train = sum(key in trained for key in text_keys(validation))
    return TaskData(train=train, validation=validation, task_type=scheme.task_type, label_names=scheme.names,
                    num_labels=1 if scheme.names is None else len(scheme.names), is_pair=len(text_cols) == 2,
                    fingerprint=fingerprint(train, validation, scheme.task_type, scheme.names), report=report)


def _load_validation(table: _Table, text_cols: tuple[str, ...], scheme: _LabelScheme, cfg: DataConfig,
                     report: LoadReport) -> Split:
    report.rows_read["validation"] = len(table.rows)
    report.sources["validation"] = table.name
    report.blank_lines["validation"] = table.blank_lines
    report.validation_source = table.origin
    _require_rows(table)
    if _text_columns(table, cfg) != text_cols:
        raise DataError(f"{table.span()}: validation uses text column(s) {list(_text_columns(table, cfg))} but "
                        f"train uses {list(text_cols)}")
    _require_label_column(table, cfg.label_column)
    rows = _clean_rows(table, text_cols, cfg, "validation", report)
    rows, labels = _map_labels(table, rows, scheme, cfg, "validation", report)
    if not rows:
        raise DataError(f"{table.span()}: no usable validation rows")
    return _to_split(rows, labels, text_cols)
