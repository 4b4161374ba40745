"""One tenant's slow or killed dataset never fails another's, and a server that dies mid-request leaves
nothing stuck: its Idempotency-Key is taken over once its lease lapses, its folders are removed at the
next start. The ingest tests run ``IngestWorkers`` on a stand-in for ``describe_dataset`` (this module
stays light to import: each fresh worker process imports it); the others run on SQLite and PostgreSQL."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

INGEST_TIMEOUT = 8.0   # above a fresh worker's start (a spawn importing this module), far below the slow job


def _stand_in_describe(job: dict, field, public_names, max_rows, max_bytes, backbone) -> dict:
    """``describe_dataset``'s stand-in: sleeps ``job["first_sleep"]`` the first time (``job["marker"]``
    not there yet), else ``job["sleep"]``; ``job["exit"]`` kills its worker."""
    if job.get("exit"):
        os._exit(1)
    marker = Path(job["marker"]) if "marker" in job else None
    if marker is not None and not marker.exists():
        marker.touch()
        time.sleep(job["first_sleep"])
    time.sleep(job.get("sleep", 0))
    return {"slept": job.get("sleep", 0)}


def _args(job: dict) -> tuple:
    return (job, "file", {}, 1, 1, None)


@pytest.fixture
def stand_in_ingest(monkeypatch):
    """A fresh ingest pool (the tests that use it are marked to really stop it) running the stand-in."""
    from service import datasets
    datasets.IngestWorkers.shutdown()
    monkeypatch.setattr(datasets, "describe_dataset", _stand_in_describe)
    yield datasets.IngestWorkers
    datasets.IngestWorkers.shutdown()


def _read_in_threads(ingest, jobs: dict[str, dict], pause: float = 1.0, owner: str | None = None) -> dict:
    """Each job read on its own thread (as concurrent requests do), ``pause`` apart, for ``owner`` (by default
    each job its own API key's); name -> result or error."""
    results: dict = {}

    def read(name, job):
        try:
            results[name] = ingest.describe(*_args(job), field="file", owner=owner or name)
        except BaseException as err:  # noqa: BLE001 - the test asserts what each got
            results[name] = err
    threads = []
    for name, job in jobs.items():
        threads.append(threading.Thread(target=read, args=(name, job)))
        threads[-1].start()
        time.sleep(pause)
    for thread in threads:
        thread.join(120)
    return results


def _warm(workers_cls, workers: int) -> None:
    """Start the pool's worker processes before any clock under test starts."""
    warm = workers_cls(workers, 120)
    assert _read_in_threads(warm, {f"w{i}": {"sleep": 0.5} for i in range(workers)}, pause=0) \
        == {f"w{i}": {"slept": 0.5} for i in range(workers)}


@pytest.mark.stops_ingest_workers
def test_one_key_cannot_fill_the_ingest_queue(stand_in_ingest):
    """Half the queue at most is one key's: its next dataset is a 429 that speaks of that key only, while
    another key's dataset is still taken."""
    from service.datasets import QUEUE_PER_WORKER
    from service.errors import ApiError
    _warm(stand_in_ingest, 1)
    ingest = stand_in_ingest(1, 120)
    share = QUEUE_PER_WORKER // 2
    jobs = {f"a{i}": {"sleep": 1.0} for i in range(share + 1)}
    results: dict = {}
    busy = threading.Thread(target=lambda: results.update(_read_in_threads(ingest, jobs, pause=0.05, owner="alice")))
    busy.start()
    time.sleep(0.05 * (share + 2))
    other = _read_in_threads(ingest, {"b": {"sleep": 0.1}}, pause=0, owner="bob")
    busy.join(120)
    refused = [r for r in results.values() if isinstance(r, ApiError)]
    assert len(refused) == 1 and refused[0].status == 429 and "this API key" in refused[0].detail
    assert sum(r == {"slept": 1.0} for r in results.values()) == share
    assert other == {"b": {"slept": 0.1}}


# --------------------------------------------------------------------------- 1. one dataset's kill spares the others
@pytest.mark.stops_ingest_workers
def test_a_dataset_killed_for_its_timeout_fails_none_queued_behind_it(stand_in_ingest):
    from service.errors import ApiError
    _warm(stand_in_ingest, 1)
    ingest = stand_in_ingest(1, INGEST_TIMEOUT)
    got = _read_in_threads(ingest, {"slow": {"sleep": 60}, "next": {"sleep": 0.2}, "queued": {"sleep": 0.2}})
    assert isinstance(got["slow"], ApiError) and got["slow"].status == 422, got
    assert "took longer" in got["slow"].detail
    # they waited for the one worker, then had their own full time: neither 503 nor a cancelled future
    assert got["next"] == {"slept": 0.2} and got["queued"] == {"slept": 0.2}, got


@pytest.mark.stops_ingest_workers
def test_a_dataset_whose_pool_is_torn_down_under_it_is_read_again(stand_in_ingest, tmp_path):
    from service.errors import ApiError
    _warm(stand_in_ingest, 2)
    ingest = stand_in_ingest(2, INGEST_TIMEOUT)
    # "other" runs beside "slow" on the second worker when slow's timeout kills the pool
    got = _read_in_threads(ingest, {"slow": {"sleep": 60},
                                    "other": {"first_sleep": 60, "sleep": 0.2, "marker": str(tmp_path / "m")}})
    assert isinstance(got["slow"], ApiError) and got["slow"].status == 422, got
    assert got["other"] == {"slept": 0.2}, got


@pytest.mark.stops_ingest_workers
def test_a_dataset_that_kills_its_worker_twice_is_a_503_saying_retry(stand_in_ingest):
    from service.errors import ApiError
    got = _read_in_threads(stand_in_ingest(1, INGEST_TIMEOUT), {"crash": {"exit": True}}, pause=0)
    assert isinstance(got["crash"], ApiError) and got["crash"].status == 503, got
    assert "retry" in got["crash"].detail and got["crash"].headers == {"Retry-After": "10"}


# --------------------------------------------------------------------------- 2. a server that died mid-request
def _client_on(state_dir: Path, database_url: str, **settings):
    from test_service_hardening import _app, _client
    return _client(_app(state_dir, database_url, **settings))


def _backdate_idempotency(store, seconds: float) -> None:
    from service import db
    with store.engine.begin() as conn:
        conn.execute(db.idempotency.update().values(created_at=time.time() - seconds))


def test_a_key_left_in_progress_by_a_dead_server_is_taken_over_after_its_lease(tmp_path, database_url,
                                                                              monkeypatch):
    from service.errors import ApiError
    from service_support import small_jsonl
    from test_service_hardening import _is_json_error, upload
    client = _client_on(tmp_path / "svc", database_url, idempotency_lease_s=30)
    try:
        store, headers = client.app.state.store, {**client.keys["alice"], "Idempotency-Key": "k1"}
        path = small_jsonl(tmp_path / "d.jsonl")

        def server_dies(*_args, **_kwargs):
            raise ApiError(503, "unavailable", "the process is gone")
        with monkeypatch.context() as m:   # the key is taken, then nothing records the request's end
            m.setattr(store, "idempotency_release", lambda *a: None)
            m.setattr(store, "idempotency_finish", lambda *a: None)
            m.setattr(client.app.state.ingest, "describe", server_dies)
            assert upload(client, headers, path).status_code == 503
        assert "in progress" in _is_json_error(upload(client, headers, path), 409, "Idempotency-Key")["detail"]
        _backdate_idempotency(store, 31)   # the lease has lapsed: the retry takes the key over
        first = upload(client, headers, path)
        assert first.status_code == 201 and "idempotent-replayed" not in first.headers, first.text
        again = upload(client, headers, path)
        assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
        assert client.get("/datasets", headers=client.keys["alice"]).json()["total"] == 1
    finally:
        client.__exit__(None, None, None)


def test_a_request_running_past_its_lease_keeps_its_key(tmp_path, database_url, monkeypatch):
    from service_support import small_jsonl
    from test_service_hardening import _is_json_error, upload
    client = _client_on(tmp_path / "svc", database_url, idempotency_lease_s=0.6)
    try:
        ingest, headers = client.app.state.ingest, {**client.keys["alice"], "Idempotency-Key": "k2"}
        real, started = ingest.describe, threading.Event()

        def slow_describe(*args, **kwargs):   # waits (as behind other datasets) well past the lease
            started.set()
            time.sleep(3)
            return real(*args, **kwargs)
        monkeypatch.setattr(ingest, "describe", slow_describe)
        path, answers = small_jsonl(tmp_path / "d.jsonl"), {}
        first = threading.Thread(target=lambda: answers.setdefault("first", upload(client, headers, path)))
        first.start()
        assert started.wait(30)
        time.sleep(1.5)
        _is_json_error(upload(client, headers, path), 409, "Idempotency-Key")   # renewed: not taken over
        first.join(120)
        assert answers["first"].status_code == 201, answers["first"].text
        assert client.get("/datasets", headers=client.keys["alice"]).json()["total"] == 1
    finally:
        client.__exit__(None, None, None)


def test_orphaned_folders_are_removed_at_startup(tmp_path, database_url):
    from service import db
    state = tmp_path / "svc"
    client = _client_on(state, database_url, idempotency_lease_s=60)
    store = client.app.state.store
    client.__exit__(None, None, None)
    now, old = time.time(), time.time() - 61
    known_ds, known_search = "ds_" + "a" * 20, "search_" + "b" * 20
    store.add_dataset({"id": known_ds, "owner": "key_x", "name": "d", "source_kind": "upload", "source": "d.jsonl",
                       "data_config": {}, "fingerprint": "f", "stats": {}, "meta_features": {}, "created_at": now})
    with store.engine.begin() as conn:
        conn.execute(db.searches.insert().values(id=known_search, owner="key_x", dataset_id=known_ds, state="failed",
                                                 request={}, out_dir=str(state / "searches" / known_search),
                                                 created_at=now, updated_at=now))
    folders = {name: state / kind / name for kind, name in [
        ("datasets", known_ds), ("searches", known_search), ("datasets", "ds_" + "c" * 20),
        ("searches", "search_" + "d" * 20), ("datasets", "ds_" + "e" * 20), ("datasets", "notes")]}
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text("{}\n")
        if name != "ds_" + "e" * 20:   # that one was written just now: its request may still be running
            os.utime(folder, (old, old))
    _client_on(state, database_url, idempotency_lease_s=60).__exit__(None, None, None)   # a restart
    kept = {name for name, folder in folders.items() if folder.exists()}
    assert kept == {known_ds, known_search, "ds_" + "e" * 20, "notes"}


def test_a_hub_fetch_given_up_on_leaves_no_files_once_it_ends(tmp_path):
    """The request answers at the timeout, but the fetch's thread runs on and writes its dataset: once it
    ends, what it wrote is removed (it was left until the next startup)."""
    import asyncio

    from service.datasets import HubWorkers, remove_dataset_files
    from service.errors import ApiError

    folder = tmp_path / "ds_x"

    def slow_fetch():
        time.sleep(1.0)
        folder.mkdir()
        (folder / "hf").write_text("late")

    hub = HubWorkers(1, 0.2)
    with pytest.raises(ApiError, match="did not answer"):
        asyncio.run(hub.run(slow_fetch, abandoned=lambda: remove_dataset_files(folder)))
    deadline = time.time() + 10
    while hub.busy and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    assert not folder.exists()
    hub.shutdown()
