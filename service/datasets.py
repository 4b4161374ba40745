"""Dataset intake: uploads streamed to disk under a size cap, references checked against the allowed
roots, hub names fetched (only when the hub is on) into the state folder, every file bounded in rows and
decoded size before it is parsed, then the library's data layer (validation, labels, split, fingerprint)
and meta-features.

A hub name is only ever a hub repository id: it is never opened as a server path (the files are fetched
into the dataset's own folder first, and the data layer reads that folder)."""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

from autodistill.config import DataConfig
from autodistill.data import HUB_DATA_SUFFIXES, TaskData, format_for, load_task_data

from .errors import ApiError, public_text

log = logging.getLogger("autodistill.service")

UPLOAD_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
CHUNK = 1 << 20
QUEUE_PER_WORKER = 8   # datasets waiting for (or in) an ingest worker; 429 beyond
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) created with mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


def upload_suffix(filename: str | None, field: str) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        raise ApiError(422, "validation_error", f"{field}: file name must end in one of "
                       f"{sorted(UPLOAD_FORMATS)} (got {filename!r})", field=field)
    return suffix


def save_stream(src: BinaryIO, dest: Path, limit_bytes: int, field: str) -> int:
    """Copy ``src`` to ``dest`` in chunks; 413 (and nothing left on disk) past ``limit_bytes``."""
    private_dir(dest.parent)
    written = 0
    with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE), "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > limit_bytes:
                out.close()
                dest.unlink(missing_ok=True)
                raise ApiError(413, "payload_too_large", f"{field}: larger than the upload cap of "
                               f"{limit_bytes / 2**20:.1f} MB", field=field)
            out.write(chunk)
    if written == 0:
        dest.unlink(missing_ok=True)
        raise ApiError(422, "validation_error", f"{field}: the file is empty", field=field)
    return written


def resolve_under_roots(raw: str, roots: list[Path], field: str) -> Path:
    """The real path of ``raw`` if it lies under an allowed root (symlinks resolved), else 403."""
    if not roots:
        raise ApiError(403, "forbidden", f"{field}: this server allows no dataset paths (set "
                       "AUTODISTILL_SERVICE_ALLOWED_ROOTS)", field=field)
    if "\x00" in raw:
        raise ApiError(422, "validation_error", f"{field}: a path cannot contain a NUL character", field=field)
    candidate = Path(raw)
    bases = [candidate] if candidate.is_absolute() else [Path(r) / candidate for r in roots]
    inside = [real for real in (Path(os.path.realpath(b)) for b in bases) if _under_a_root(real, roots)]
    for real in inside:   # a relative path: the first root that has it
        if real.exists():
            return real
    if inside:
        raise ApiError(422, "validation_error", f"{field}: {raw!r} does not exist under the allowed roots",
                       field=field)
    raise ApiError(403, "forbidden", f"{field}: {raw!r} is outside the allowed roots", field=field)


def _under_a_root(real: Path, roots: list[Path]) -> bool:
    return any(real == root or root in real.parents for root in (Path(os.path.realpath(r)) for r in roots))


_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_hf_name(name: str, field: str = "hf_name") -> str:
    if len(name) > 200 or not _HF_NAME.match(name) or ".." in name:
        raise ApiError(422, "validation_error", f"{field}: {name!r} is not a Hugging Face datasets name",
                       field=field)
    return name


def fetch_from_hub(name: str, dest: Path, settings: Any, field: str = "hf_name") -> Path:
    """The hub dataset repository ``name`` fetched into ``dest`` and saved there as an HF dataset folder
    (returned). Only the repository's data files are fetched, and only when they fit in the upload cap;
    every network call has the hub timeout. Runs on the hub workers, never on a request thread."""
    import datasets
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import constants as hub_constants
    hub_constants.HF_HUB_DOWNLOAD_TIMEOUT = int(settings.hub_timeout_s)
    hub_constants.HF_HUB_ETAG_TIMEOUT = int(settings.hub_timeout_s)
    # token=False everywhere: never the server's own Hugging Face token, so a tenant reads public sets only
    api = HfApi(endpoint=settings.hub_endpoint, token=False)
    try:
        info = api.dataset_info(name, files_metadata=True, timeout=settings.hub_timeout_s, token=False)
    except Exception as err:  # noqa: BLE001 - not found, gated, unreachable
        log.warning("hub lookup of %r failed: %s", name, err)
        if "Timeout" in type(err).__name__:   # the call's own timeout fired before the workers' wall clock
            raise hub_timeout_error(field, settings.hub_timeout_s) from None
        raise ApiError(422, "invalid_dataset", f"{field}: the hub has no readable dataset {name!r} "
                       f"({type(err).__name__})", field=field) from None
    files = [f for f in info.siblings or [] if f.rfilename.lower().endswith(HUB_DATA_SUFFIXES)]
    total = sum(f.size or 0 for f in files)
    if not files:
        raise ApiError(422, "invalid_dataset", f"{field}: {name!r} has no data files", field=field)
    if total > settings.max_upload_mb * 2**20:
        raise _too_big(field, f"{name!r} holds {total / 2**20:.1f} MB of data files, over the upload cap")
    repo = private_dir(dest / "repo")
    try:
        snapshot_download(name, repo_type="dataset", revision=info.sha, local_dir=repo, endpoint=settings.hub_endpoint,
                          allow_patterns=[f.rfilename for f in files], etag_timeout=settings.hub_timeout_s,
                          max_workers=2, token=False)
    except Exception as err:  # noqa: BLE001 - network, gated, vanished
        log.warning("hub download of %r failed: %s", name, err)
        raise ApiError(422, "invalid_dataset", f"{field}: downloading {name!r} from the hub failed "
                       f"({type(err).__name__})", field=field) from None
    left = settings.max_decoded_bytes
    for path in sorted(p for p in repo.rglob("*") if p.is_file() and p.name.lower().endswith(HUB_DATA_SUFFIXES)):
        left -= _check_file(path, settings.max_rows, left, field, "auto")   # before anything parses them (by extension)
    try:
        obj = datasets.load_dataset(str(repo), cache_dir=str(dest / "cache"))
        obj.save_to_disk(str(dest / "hf"))
    except Exception as err:  # noqa: BLE001
        log.warning("hub dataset %r cannot be loaded: %s", name, err)
        raise ApiError(422, "invalid_dataset", f"{field}: {name!r} cannot be read as a dataset "
                       f"({type(err).__name__})", field=field) from None
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(dest / "cache", ignore_errors=True)
    return dest / "hf"


def hub_timeout_error(field: str, timeout: float) -> ApiError:
    return ApiError(422, "invalid_dataset", f"{field}: the hub did not answer within {timeout:.0f} s "
                    "(hub_timeout_s)", field=field)


class HubWorkers:
    """Hub fetches on their own few threads with a wall-clock cap: a hub that never answers holds a hub
    worker, never a request thread; when every worker is busy the answer is 429 at once."""

    def __init__(self, workers: int, timeout: float):
        import concurrent.futures
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hub")
        self.workers, self.timeout = workers, timeout
        self.busy = 0
        self._lock = threading.Lock()

    def _done(self, _future) -> None:
        with self._lock:
            self.busy -= 1

    async def run(self, fn, *args, field: str = "hf_name", abandoned: Callable[[], None] | None = None):
        """``fn(*args)`` on a hub worker, at most ``timeout`` s; a fetch given up on keeps its thread until it
        ends (a thread cannot be stopped), and ``abandoned`` then cleans up what it wrote meanwhile."""
        import asyncio
        with self._lock:
            if self.busy >= self.workers:
                raise ApiError(429, "too_many_requests", f"{field}: every hub worker is busy; retry later",
                               field=field, headers={"Retry-After": str(int(self.timeout))})
            self.busy += 1
        future = self.pool.submit(fn, *args)
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except asyncio.TimeoutError:
            if abandoned is not None:
                future.add_done_callback(lambda _future: abandoned())
            raise hub_timeout_error(field, self.timeout) from None

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def load_validated(cfg: DataConfig, field: str, public_names: dict[str, str]) -> TaskData:
    """The data layer's TaskData, or a 422 naming ``field`` (server paths in the message replaced by
    ``public_names``: server path -> what the client called it)."""
    from autodistill.data import DataError
    try:
        return load_task_data(cfg)
    except DataError as err:
        raise ApiError(422, "invalid_dataset", public_text(str(err), public_names.items()), field=field) from None
    except (OSError, ValueError, RecursionError) as err:   # unreadable file, bad encoding
        raise ApiError(422, "invalid_dataset", public_text(f"cannot read the dataset: {err}", public_names.items()),
                       field=field) from None


# --------------------------------------------------------------------------- bounds before parsing
def _too_big(field: str, what: str) -> ApiError:
    return ApiError(413, "payload_too_large", f"{field}: {what}", field=field)


def _count_lines(path: Path, stop_after: int, cr_ends_lines: bool) -> int:
    """Line ends in ``path``, counting as the reader will: "\n" (JSON lines), or also a lone "\r" (the csv
    module's rows); stops counting past ``stop_after``."""
    lines = 0
    previous = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            lines += chunk.count(b"\n")
            if cr_ends_lines:   # a "\r\n" is one line end, also when a chunk ends between the two
                lines += chunk.count(b"\r") - chunk.count(b"\r\n") - (previous == b"\r" and chunk[:1] == b"\n")
            previous = chunk[-1:]
            if lines > stop_after:
                break
    return lines


def _check_parquet(path: Path, max_rows: int, max_bytes: int, field: str) -> int:
    """Rows from the footer; decoded size (returned) from the values themselves, read as dictionary arrays
    (so a 12 KB file of 1M repeated strings is measured without being expanded)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise ApiError(422, "invalid_dataset", f"{field}: cannot read as Parquet", field=field) from None
    meta = pf.metadata
    if meta.num_rows > max_rows:
        raise _too_big(field, f"{meta.num_rows} rows, over the cap of {max_rows} (max_rows)")
    stored = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if stored > max_bytes:
        raise _too_big(field, f"{stored / 2**20:.1f} MB uncompressed, over the cap of {max_bytes / 2**20:.1f} MB")
    schema = pf.schema_arrow
    for f in schema:
        if pa.types.is_nested(f.type):
            raise ApiError(422, "invalid_dataset", f"{field}: column {f.name!r} is nested ({f.type}); "
                           "use flat text and label columns", field=field)
    def textual(t) -> bool:
        t = t.value_type if pa.types.is_dictionary(t) else t
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t)
    strings = [f.name for f in schema if textual(f.type)]
    decoded = 0
    try:
        reader = pq.ParquetFile(path, read_dictionary=strings)
        for batch in reader.iter_batches(batch_size=65_536, columns=strings):
            for col in batch.columns:
                lengths = pc.binary_length(col.dictionary)
                decoded += int(pc.sum(pc.take(lengths, col.indices)).as_py() or 0)
            if decoded > max_bytes:
                raise _too_big(field, f"more than {max_bytes / 2**20:.1f} MB of decoded text (max_decoded_mb)")
    except ApiError:
        raise
    except Exception:  # noqa: BLE001
        raise ApiError(422, "invalid_dataset", f"{field}: cannot read as Parquet", field=field) from None
    return max(stored, decoded)


def _check_file(path: Path, max_rows: int, max_bytes: int, field: str, fmt: str) -> int:
    """Bytes a data file decodes to (413 past ``max_rows`` rows or ``max_bytes``), measured in the format the
    loader will read it in: ``data.format``, else the one its extension names."""
    kind = format_for(path, fmt)
    if kind == "parquet":
        return _check_parquet(path, max_rows, max_bytes, field)
    size = path.stat().st_size
    if size > max_bytes:
        raise _too_big(field, f"{size / 2**20:.1f} MB, over the cap of {max_bytes / 2**20:.1f} MB")
    if kind is not None and _count_lines(path, max_rows + 1, kind in ("csv", "tsv")) > max_rows + 1:  # + a header
        raise _too_big(field, f"more than {max_rows} rows (max_rows)")
    return size   # no format (kind None): the loader refuses the file and says why


def check_bounds(spec: Path, max_rows: int, max_bytes: int, field: str, fmt: str = "auto") -> None:
    """``spec`` (a data file, a folder of train/validation files, or a saved HF dataset folder) fits in
    ``max_rows`` rows per file and ``max_bytes`` decoded bytes in all; else 413, before anything is parsed.
    ``fmt`` is the dataset's ``data.format``."""
    if spec.is_file():
        _check_file(spec, max_rows, max_bytes, field, fmt)
        return
    arrows = sorted(spec.rglob("*.arrow"))
    if arrows:   # a saved HF dataset: Arrow stores values as they decode; rows from its state files
        total = sum(p.stat().st_size for p in arrows)
        if total > max_bytes:
            raise _too_big(field, f"{total / 2**20:.1f} MB of Arrow data, over the cap of {max_bytes / 2**20:.1f} MB")
        for state in spec.rglob("state.json"):
            info = state.with_name("dataset_info.json")
            splits = json.loads(info.read_text(encoding="utf-8")).get("splits") or {} if info.is_file() else {}
            if any(int((v or {}).get("num_examples") or 0) > max_rows for v in splits.values()):
                raise _too_big(field, f"a split has more than {max_rows} rows (max_rows)")
        return
    total = 0
    for path in sorted(spec.iterdir()):
        if path.is_file() and path.stem in ("train", "validation"):
            total += _check_file(path, max_rows, max_bytes - total, field, fmt)


def dataset_stats(task: TaskData) -> dict[str, Any]:
    report = task.report
    return {"task_type": task.task_type, "num_labels": task.num_labels, "label_names": task.label_names,
            "is_pair": task.is_pair, "train_rows": len(task.train), "validation_rows": len(task.validation),
            "validation_source": report.validation_source, "rows_read": report.rows_read,
            "dropped": report.dropped, "validation_in_train": report.validation_in_train}


@functools.lru_cache(maxsize=4)
def _tokenizer(backbone: str):
    from autodistill.models import load_tokenizer
    return load_tokenizer(backbone)


@functools.lru_cache(maxsize=2)
def _backbone_model(backbone: str):
    from autodistill.meta.features import resolve_backbone_model
    return resolve_backbone_model(backbone).eval()


def meta_features(task: TaskData, backbone: str | None) -> dict[str, Any]:
    """The recommender's meta-features (embedding ones only when a backbone is configured)."""
    from autodistill.config import DEFAULT_BACKBONE
    from autodistill.meta.features import task_meta_features
    return task_meta_features(task, _backbone_model(backbone) if backbone else None,
                              tokenizer=_tokenizer(backbone or DEFAULT_BACKBONE))


def describe_dataset(cfg: DataConfig, field: str, public_names: dict[str, str], max_rows: int, max_bytes: int,
                     backbone: str | None) -> dict[str, Any]:
    """Bounds, load and meta-features of one dataset: what ``POST /datasets`` records (fingerprint, stats,
    meta_features), or an ApiError (413/422) naming ``field`` in the client's own names."""
    for spec in (cfg.train, cfg.validation):
        if spec:
            check_bounds(Path(spec), max_rows, max_bytes, field, cfg.format)
    task = load_validated(cfg, field, public_names)
    try:
        features = meta_features(task, backbone)
    except (ValueError, ArithmeticError, RecursionError) as err:   # e.g. labels no statistic survives
        raise ApiError(422, "invalid_dataset", f"{field}: its meta-features cannot be computed: "
                       f"{public_text(str(err), public_names.items())}", field=field) from None
    return {"fingerprint": task.fingerprint, "stats": dataset_stats(task),
            "meta_features": json.loads(json.dumps(features, default=float))}


class IngestWorkers:
    """``describe_dataset`` in worker processes (spawned once per service process, shared by its apps):
    its CPU work never holds the service's GIL (LAPACK's SVD in the meta-features holds it for seconds,
    which stalled every other request), and a dataset that runs past ``timeout`` has its worker killed.

    A dataset is handed to the pool only when a worker is free for it (one slot per worker): the pool
    would otherwise mark one more job "running" while it still waits in the pool's queue, starting its
    clock early and putting it in the way of another dataset's kill. A dataset whose pool is torn down
    under it (another dataset's timeout, a worker that died) is read once more on a fresh pool."""

    _pool = None
    _size = 0       # worker processes of the pool (and slots), fixed until the service stops
    _slots: threading.Semaphore | None = None
    _lock = threading.Lock()
    _waiting = 0
    _waiting_by_owner: dict[str, int] = {}

    def __init__(self, workers: int, timeout: float):
        self.workers, self.timeout = workers, timeout

    def _slot(self) -> threading.Semaphore:
        with IngestWorkers._lock:
            if IngestWorkers._slots is None:
                IngestWorkers._size = self.workers
                IngestWorkers._slots = threading.Semaphore(self.workers)
            return IngestWorkers._slots

    def _executor(self):
        import concurrent.futures
        import multiprocessing
        with IngestWorkers._lock:
            if IngestWorkers._pool is None:
                IngestWorkers._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=IngestWorkers._size, mp_context=multiprocessing.get_context("spawn"))
            return IngestWorkers._pool

    @classmethod
    def _kill(cls, pool) -> None:
        with cls._lock:
            if cls._pool is pool:
                cls._pool = None
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    @classmethod
    def shutdown(cls) -> None:
        """Stop the worker processes (the service is stopping; a later request spawns new ones)."""
        with cls._lock:
            pool, cls._pool, cls._slots = cls._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def describe(self, *args, field: str, owner: str) -> dict[str, Any]:
        """``describe_dataset(*args)`` in a worker; 429 when ``QUEUE_PER_WORKER`` datasets per worker are
        already waiting, or half of them are ``owner``'s (one key cannot fill the queue); the timeout runs
        from when a worker is free for it."""
        capacity = self.workers * QUEUE_PER_WORKER
        with IngestWorkers._lock:
            mine = IngestWorkers._waiting_by_owner.get(owner, 0)
            if mine >= max(1, capacity // 2):
                raise ApiError(429, "too_many_requests", f"this API key has {mine} datasets being read, the most "
                               "it may at once; retry when one is done", field=field, headers={"Retry-After": "10"})
            if IngestWorkers._waiting >= capacity:
                raise ApiError(429, "too_many_requests", "too many datasets are being read; retry later",
                               field=field, headers={"Retry-After": "10"})
            IngestWorkers._waiting += 1
            IngestWorkers._waiting_by_owner[owner] = mine + 1
        try:
            with self._slot():
                for _attempt in range(2):
                    try:
                        return self._run(args, field)
                    except _PoolLost:
                        pass
            raise ApiError(503, "unavailable", "the dataset worker stopped twice while reading this dataset "
                           "(out of memory?); retry the request later", headers={"Retry-After": "10"})
        finally:
            with IngestWorkers._lock:
                IngestWorkers._waiting -= 1
                left = IngestWorkers._waiting_by_owner.pop(owner) - 1
                if left:
                    IngestWorkers._waiting_by_owner[owner] = left

    def _run(self, args: tuple, field: str) -> dict[str, Any]:
        """One attempt on the current pool; ``_PoolLost`` when the pool is torn down under it."""
        import concurrent.futures
        from concurrent.futures.process import BrokenProcessPool
        pool = self._executor()
        try:
            future = pool.submit(describe_dataset, *args)
        except RuntimeError:   # BrokenProcessPool, or shut down since we took it
            self._kill(pool)
            raise _PoolLost from None
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            self._kill(pool)
            raise ApiError(422, "invalid_dataset", f"{field}: reading and describing the dataset took longer than "
                           f"{self.timeout:.0f} s (ingest_timeout_s)", field=field) from None
        except (BrokenProcessPool, concurrent.futures.CancelledError):
            self._kill(pool)
            raise _PoolLost from None


class _PoolLost(Exception):
    """The ingest pool was torn down (killed or broken) before this dataset's answer came back."""


def remove_dataset_files(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
