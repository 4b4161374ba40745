"""What one key may keep and send (review of the service, items 1-11): disk per key, body caps per route,
a monitor that survives the database, hub fetches without the server's token, search sizes, JSON depth
whatever the encoding, names both databases store, roots, what recommendations count, refits after a
delete, and concurrent downloads. Searches run on a scripted job backend; every test that touches the
database runs on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from service import db
from service.searches import SearchManager
from service.settings import ServiceSettings
from service.store import Store
from service_support import ScriptedBackend, small_jsonl
from autodistill.config import PipelineConfig
from autodistill.meta import META_DATASET_DIR
from test_service_hardening import _app, _asgi_post, _client, _finished_search_of, _is_json_error, upload


@pytest.fixture
def client_with(tmp_path, database_url):
    """``client_with(**settings)``: a test client (keys alice, bob, root) on a service with those settings."""
    clients = []

    def make(**settings):
        clients.append(_client(_app(tmp_path / f"svc{len(clients)}", database_url, **settings)))
        return clients[-1]
    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _search_body(dataset_id: str, **extra) -> dict:
    return {"dataset_id": dataset_id, "space": "cpu-fast", "trials": 2, **extra}


def _upload_new(client, who: str, folder: Path, seed: int):
    return upload(client, client.keys[who], small_jsonl(folder / f"{who}{seed}.jsonl", seed=seed))


# --------------------------------------------------------------------------- 1. disk per key
def test_datasets_are_capped_per_key(client_with, tmp_path):
    client = client_with(max_datasets_per_key=2)
    first = _upload_new(client, "alice", tmp_path, 0).json()["id"]
    assert _upload_new(client, "alice", tmp_path, 1).status_code == 201
    retry = {**client.keys["alice"], "Idempotency-Key": "third"}
    with open(small_jsonl(tmp_path / "third.jsonl", seed=2), "rb") as fh:
        data = fh.read()
    r = client.post("/datasets", files={"file": ("third.jsonl", data)}, headers=retry)
    body = _is_json_error(r, 429)
    assert "DELETE /datasets" in body["detail"] and "2 datasets" in body["detail"]
    assert _upload_new(client, "bob", tmp_path, 0).status_code == 201          # a cap per key
    assert client.delete(f"/datasets/{first}", headers=client.keys["alice"]).status_code == 204
    # room again; the refused request was not remembered as its Idempotency-Key's answer
    r = client.post("/datasets", files={"file": ("third.jsonl", data)}, headers=retry)
    assert r.status_code == 201, r.text
    assert client.get("/datasets", headers=client.keys["alice"]).json()["total"] == 2


def test_stored_searches_are_capped_and_a_finished_one_can_be_deleted(client_with, tmp_path):
    client = client_with(max_stored_searches_per_key=2, max_searches_per_key=5)
    alice, bob = client.keys["alice"], client.keys["bob"]
    ds = _upload_new(client, "alice", tmp_path, 0).json()["id"]
    ids = [client.post("/searches", json=_search_body(ds), headers=alice).json()["id"] for _ in range(2)]
    body = _is_json_error(client.post("/searches", json=_search_body(ds), headers=alice), 429)
    assert "DELETE /searches" in body["detail"] and "finished" in body["detail"]
    manager = client.app.state.searches
    out = Path(manager.store.get_search(None, ids[0])["out_dir"])
    (out / f"{ids[0]}-best.tar.gz").write_bytes(b"student")    # files the search left behind
    assert "cancel" in _is_json_error(client.delete(f"/searches/{ids[0]}", headers=alice), 409)["detail"]
    manager.backend.states[ids[0]] = "succeeded"
    _is_json_error(client.delete(f"/searches/{ids[0]}", headers=bob), 404)   # another key's: not there
    assert out.is_dir()
    assert client.delete(f"/searches/{ids[0]}", headers=alice).status_code == 204
    assert not out.exists()
    _is_json_error(client.get(f"/searches/{ids[0]}", headers=alice), 404)
    _is_json_error(client.delete(f"/searches/{ids[0]}", headers=alice), 404)
    assert client.get("/searches", headers=alice).json()["total"] == 1
    assert client.post("/searches", json=_search_body(ds), headers=alice).status_code == 202   # room again


def test_deleting_a_remote_search_clears_its_search_storage(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.migrate(engine)
    store = Store(engine)
    store.add_dataset({"id": "ds1", "owner": "k", "name": "d", "source_kind": "upload", "source": "x",
                       "data_config": {"train": str(small_jsonl(tmp_path / "train.jsonl"))}, "fingerprint": "f",
                       "stats": {}, "meta_features": {}, "created_at": time.time()})
    settings = ServiceSettings(state_dir=tmp_path / "state", ray_address="http://cluster:8265",
                               search_storage=str(tmp_path / "storage"))
    manager = SearchManager(store, ScriptedBackend(), settings)
    search = manager.create("k", store.get_dataset(None, "ds1"), {"space": "cpu-fast", "trials": 2}, None)
    published = tmp_path / "storage" / search["id"]
    (published / "best").mkdir(parents=True)
    (published / "best" / "model.safetensors").write_bytes(b"weights")
    store.update_search(search["id"], state="succeeded")
    manager.delete(store.get_search("k", search["id"]))
    assert not published.exists() and not Path(search["out_dir"]).exists()
    assert store.get_search(None, search["id"]) is None


# --------------------------------------------------------------------------- 2. the upload cap is the upload route's
@pytest.mark.parametrize("path", ["/searches", "/recommendations", "/datasets/ds_x", "/meta-model/refit"])
def test_only_the_upload_route_gets_the_upload_cap(client_with, path):
    client = client_with()
    key = client.keys["alice"]["Authorization"].encode()
    multipart = (b"content-type", b"multipart/form-data; boundary=b")
    one_mb = b"x" * 2**20
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    status, body, read = _asgi_post(client.app, path, [multipart, (b"authorization", key)], 150, one_mb, head)
    assert (status, body["error"], read) == (413, "payload_too_large", 1)   # cut at the JSON cap (256 KB)


# --------------------------------------------------------------------------- 3. the monitor outlives a failed round
def test_the_monitor_survives_a_database_error(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.migrate(engine)
    store = Store(engine)
    now = time.time()
    store.add_dataset({"id": "ds1", "owner": "k", "name": "d", "source_kind": "upload", "source": "x",
                       "data_config": {"train": "x"}, "fingerprint": "f", "stats": {}, "meta_features": {},
                       "created_at": now})
    store.add_search({"id": "s1", "owner": "k", "dataset_id": "ds1", "state": "running", "request": {},
                      "out_dir": str(tmp_path / "s1"), "progress": {}, "best": None, "error": None,
                      "submissions": 1, "created_at": now, "started_at": now, "finished_at": None,
                      "updated_at": now, "folded": False})
    backend = ScriptedBackend()
    backend.states["s1"] = "running"
    manager = SearchManager(store, backend, ServiceSettings(state_dir=tmp_path, poll_seconds=0.05))
    listed, failures = store.active_searches, []

    def fails_once():
        if not failures:
            failures.append(1)
            raise OSError("database is locked")
        return listed()
    store.active_searches = fails_once
    manager.start_monitor()
    try:
        deadline = time.time() + 10
        while not failures and time.time() < deadline:
            time.sleep(0.02)
        backend.states["s1"] = "succeeded"   # after the failed round: only a later round can see it
        while store.get_search(None, "s1")["state"] != "succeeded" and time.time() < deadline:
            time.sleep(0.05)
        assert failures and store.get_search(None, "s1")["state"] == "succeeded"
        assert manager._thread.is_alive()
    finally:
        manager.stop_monitor()


# --------------------------------------------------------------------------- 4. the hub without the server's token
def test_hub_datasets_are_fetched_without_the_servers_token(tmp_path, monkeypatch):
    import huggingface_hub
    from types import SimpleNamespace

    from service.datasets import fetch_from_hub
    from service.errors import ApiError
    calls = {}

    class FakeApi:
        def __init__(self, **kwargs):
            calls["HfApi"] = kwargs

        def dataset_info(self, name, **kwargs):
            calls["dataset_info"] = kwargs
            return SimpleNamespace(sha="0" * 40, siblings=[SimpleNamespace(rfilename="train.csv", size=10)])

    def fake_download(name, **kwargs):
        calls["snapshot_download"] = kwargs
        raise OSError("stop here")
    monkeypatch.setenv("HF_TOKEN", "hf_the_operators_own")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(ApiError):
        fetch_from_hub("someone/private-set", tmp_path, ServiceSettings(state_dir=tmp_path))
    assert {name: kwargs.get("token", "unset") for name, kwargs in calls.items()} == \
        {"HfApi": False, "dataset_info": False, "snapshot_download": False}


def test_a_hub_dataset_is_measured_then_saved(tmp_path, monkeypatch):
    """Past the download (faked: the files land in the local folder), the files are bounded by the caps, then
    loaded and saved as an HF dataset folder."""
    import huggingface_hub
    from types import SimpleNamespace

    from service.datasets import fetch_from_hub
    from service.errors import ApiError
    rows = {"few": 20, "many": 30}

    class FakeApi:
        def __init__(self, **kwargs):
            pass

        def dataset_info(self, name, **kwargs):
            return SimpleNamespace(sha="0" * 40, siblings=[SimpleNamespace(rfilename="train.csv", size=10)])

    def fake_download(name, local_dir, **kwargs):
        lines = "".join(f"item {i},{i % 2}\n" for i in range(rows[name.split("/")[1]]))
        (Path(local_dir) / "train.csv").write_text("text,label\n" + lines, encoding="utf-8")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    settings = ServiceSettings(state_dir=tmp_path, max_rows=25)
    saved = fetch_from_hub("someone/few", tmp_path / "few", settings)
    assert saved == tmp_path / "few" / "hf" and (saved / "dataset_dict.json").is_file()
    with pytest.raises(ApiError) as err:
        fetch_from_hub("someone/many", tmp_path / "many", settings)
    assert err.value.status == 413


# --------------------------------------------------------------------------- 5. every size in a search is capped
SEARCH_SIZES = [
    ({"max_concurrent_trials": 10**6}, "max_concurrent_trials"),
    ({"gpus_per_trial": 10**6}, "gpus_per_trial"),
    ({"config": {"loss": {"intermediate": {"critic_hidden": 10**8}}}}, "config.loss.intermediate.critic_hidden"),
    ({"config": {"loss": {"intermediate": {"critic_dim": 10**8}}}}, "config.loss.intermediate.critic_dim"),
    ({"config": {"loss": {"intermediate": {"projection_dim": 10**8}}}}, "config.loss.intermediate.projection_dim"),
    ({"config": {"weighting": {"meta_hidden": 10**8}}}, "config.weighting.meta_hidden"),
    ({"config": {"augmentation": {"augmenters": [{"name": "random", "top_k": 10**8}]}}},
     "config.augmentation.augmenters.0.top_k"),
    ({"config": {"augmentation": {"augmenters": [{"name": "random"}] * 1000}}}, "config.augmentation.augmenters"),
    ({"config": {"data": {"max_length": 4096}}}, "config.data.max_length"),
    ({"config": {"data": {"max_length": 512}, "optim": {"eval_batch_size": 1024}}}, "config.optim.eval_batch_size"),
    ({"config": {"data": {"max_length": 512}, "teachers": [{"batch_size": 512}]}}, "config.teachers.0.batch_size"),
]


def test_every_search_size_is_capped(client_with, tmp_path):
    client = client_with()
    ds = _upload_new(client, "alice", tmp_path, 0).json()["id"]
    for extra, field in SEARCH_SIZES:
        r = client.post("/searches", json=_search_body(ds, **extra), headers=client.keys["alice"])
        assert "on this server" in _is_json_error(r, 422, field)["detail"]
    assert not client.app.state.searches.backend.submitted
    within = {"max_concurrent_trials": 2, "gpus_per_trial": 0,
              "config": {"loss": {"intermediate": {"critic_hidden": 256}}, "weighting": {"meta_hidden": 64}}}
    assert client.post("/searches", json=_search_body(ds, **within), headers=client.keys["alice"]).status_code == 202


# --------------------------------------------------------------------------- 6. JSON depth whatever the encoding
DEEP = "[" * 5000 + "]" * 5000
DEEP_BODIES = {
    "utf-8 with a byte order mark": b"\xef\xbb\xbf" + DEEP.encode(),
    "utf-16 with a byte order mark": DEEP.encode("utf-16"),
    # an escaped quote read byte-wise ends the string early: the brackets would look like string content
    "utf-16-le, escaped quote": ('["\\"", ' + DEEP + "]").encode("utf-16-le"),
}


@pytest.mark.parametrize("path", ["/datasets", "/recommendations", "/searches"])
def test_deep_json_is_422_whatever_its_encoding(client_with, path):
    client = client_with()
    for encoding, body in DEEP_BODIES.items():
        r = client.post(path, content=body, headers={**client.keys["alice"], "content-type": "application/json"})
        assert "nested" in _is_json_error(r, 422, "body")["detail"], encoding
    bom_shallow = b"\xef\xbb\xbf" + b'{"dataset_id": "nope", "constraints": {"config": {"student.num_layers": [[1]]}}}'
    r = client.post("/recommendations", content=bom_shallow,
                    headers={**client.keys["alice"], "content-type": "application/json"})
    _is_json_error(r, 404)                                   # ordinary JSON with a BOM still parses


# --------------------------------------------------------------------------- 7. names every database stores
def test_dataset_names_are_checked_before_the_ingest(client_with, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    client = client_with(allowed_roots=[root])
    alice = client.keys["alice"]
    data = small_jsonl(tmp_path / "ok.jsonl").read_bytes()
    long_file = small_jsonl(root / ("x" * 201 + ".jsonl"))

    def post_upload(filename: str, **form):
        """A multipart upload written by hand: httpx would percent-encode a NUL in the file name."""
        parts = [f'--b\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in form.items()]
        parts.append(f'--b\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'.encode()
                     + data + b"\r\n--b--\r\n")
        return client.post("/datasets", content=b"".join(parts),
                           headers={**alice, "content-type": "multipart/form-data; boundary=b"})
    _is_json_error(post_upload("ok.jsonl", name="a\x00b"), 422, "name")
    _is_json_error(post_upload("a\x00b.jsonl"), 422, "file")
    _is_json_error(post_upload("a\x00b.jsonl", name="fine"), 422, "file")     # the file name is stored too
    _is_json_error(post_upload("y" * 201 + ".jsonl"), 422, "name")
    r = client.post("/datasets", json={"path": long_file.name, "name": "a\x00b"}, headers=alice)
    _is_json_error(r, 422, "name")
    body = _is_json_error(client.post("/datasets", json={"path": long_file.name}, headers=alice), 422, "name")
    assert "give a shorter name" in body["detail"]
    _is_json_error(client.post("/datasets", json={"hf_name": "a/b", "name": "a\x00b"}, headers=alice), 422, "name")
    assert client.get("/datasets", headers=alice).json()["total"] == 0
    r = client.post("/datasets", json={"path": long_file.name, "name": "long"}, headers=alice)
    assert r.status_code == 201 and r.json()["name"] == "long", r.text


# --------------------------------------------------------------------------- 8. a relative path tries every root
def test_a_relative_path_is_looked_up_under_every_root(tmp_path):
    from service.datasets import resolve_under_roots
    from service.errors import ApiError
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (second / "sets").mkdir(parents=True)
    data = small_jsonl(second / "sets" / "d.jsonl")
    assert resolve_under_roots("sets/d.jsonl", [first, second], "path") == data.resolve()
    assert resolve_under_roots(str(data), [first, second], "path") == data.resolve()
    with pytest.raises(ApiError) as missing:
        resolve_under_roots("sets/none.jsonl", [first, second], "path")
    with pytest.raises(ApiError) as outside:
        resolve_under_roots("../../etc/passwd", [first, second], "path")
    assert (missing.value.status, outside.value.status) == (422, 403)


# --------------------------------------------------------------------------- 9. counts over what the key may see
def test_recommendations_count_only_what_the_key_may_see(client_with, tmp_path):
    base = [META_DATASET_DIR / "runs" / f"{d}.jsonl" for d in ("cr", "mr", "sst2")]
    client = client_with(base_records=[p for p in base if p.exists()])
    data = small_jsonl(tmp_path / "same.jsonl", n=60)
    mine = upload(client, client.keys["alice"], data).json()["id"]
    theirs = upload(client, client.keys["bob"], data).json()["id"]
    _finished_search_of(client, client.keys["alice"], mine, tmp_path)   # 6 rows of a pipeline only alice ran
    assert client.post("/meta-model/refit", headers=client.keys["root"]).status_code == 200

    def model_as_seen_by(who, dataset_id):
        r = client.post("/recommendations", json={"dataset_id": dataset_id}, headers=client.keys[who])
        assert r.status_code == 200, r.text
        return r.json()["model"]
    alice, bob = model_as_seen_by("alice", mine), model_as_seen_by("bob", theirs)
    recommender = client.app.state.recommender
    info = recommender.model().info
    assert alice == {k: info[k] for k in ("method", "n_rows", "n_datasets", "n_candidates")}   # she sees it all
    assert (bob["n_datasets"], bob["n_candidates"]) == (info["n_datasets"] - 1, info["n_candidates"] - 1)
    her_rows = json.loads((recommender.model_dir() / "dataset_rows.json").read_text())[f"svc-{mine}"]
    assert her_rows >= 1 and bob["n_rows"] == info["n_rows"] - her_rows


# --------------------------------------------------------------------------- 10. a deleted dataset leaves the refits
def _succeeded_search(store: Store, owner: str, dataset_id: str, out: Path, sid: str) -> None:
    """A succeeded search of ``dataset_id`` whose trial records are real committed ones."""
    from autodistill.records import RecordStore
    records = RecordStore(out)
    for line in (META_DATASET_DIR / "runs" / "mr.jsonl").read_text(encoding="utf-8").splitlines()[:6]:
        records.append({**json.loads(line), "status": "completed"})
    now = time.time()
    assert store.add_search({"id": sid, "owner": owner, "dataset_id": dataset_id, "state": "succeeded",
                             "request": {}, "out_dir": str(out), "progress": {}, "best": None, "error": None,
                             "submissions": 1, "created_at": now, "started_at": now, "finished_at": now,
                             "updated_at": now, "folded": False}) == "added"


def test_finished_searches_of_deleted_datasets_are_not_to_fold(database_url, tmp_path):
    engine = db.make_engine(database_url)
    db.migrate(engine)
    store = Store(engine)
    for did in ("kept", "gone"):
        store.add_dataset({"id": did, "owner": "k", "name": did, "source_kind": "upload", "source": "x",
                           "data_config": {}, "fingerprint": "f", "stats": {}, "meta_features": {},
                           "created_at": time.time()})
        _succeeded_search(store, "k", did, tmp_path / did, f"s_{did}")
    assert store.delete_dataset("k", "gone") == "deleted"
    assert [s["id"] for s in store.finished_unfolded_searches()] == ["s_kept"]
    engine.dispose()


def test_a_deleted_dataset_is_left_out_of_later_refits(tmp_path):
    base = [META_DATASET_DIR / "runs" / f"{d}.jsonl" for d in ("cr", "mr", "sst2")]
    client = _client(_app(tmp_path / "svc", base_records=[p for p in base if p.exists()]))
    try:
        alice, store = client.keys["alice"], client.app.state.store
        owner = store.key_for_secret(alice["Authorization"].split()[1])["id"]
        folded, unfolded = (_upload_new(client, "alice", tmp_path, seed).json()["id"] for seed in (0, 1))
        _succeeded_search(store, owner, folded, tmp_path / "a", "search_a")
        assert client.post("/meta-model/refit", headers=client.keys["root"]).json()["searches_folded"] == 1
        assert f"svc-{folded}" in client.app.state.recommender.model().datasets
        _succeeded_search(store, owner, unfolded, tmp_path / "b", "search_b")
        for dataset_id in (folded, unfolded):
            assert client.delete(f"/datasets/{dataset_id}", headers=alice).status_code == 204
        r = client.post("/meta-model/refit", headers=client.keys["root"])
        assert r.status_code == 200 and (r.json()["searches_folded"], r.json()["records_added"]) == (0, 0), r.text
        names = set(client.app.state.recommender.model().datasets)
        assert not {f"svc-{folded}", f"svc-{unfolded}"} & names and {"cr", "mr", "sst2"} <= names
    finally:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- 11. two first downloads at once
def test_two_first_downloads_of_a_student_both_get_it(tmp_path, monkeypatch):
    import tarfile
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service import searches
    out = tmp_path / "search_x"
    (out / "best" / "student").mkdir(parents=True)
    (out / "best" / "student" / "model.safetensors").write_bytes(b"w" * 4096)
    PipelineConfig().save(out / "best" / "config.yaml")
    search = {"id": "search_x", "out_dir": str(out), "dataset_id": "ds_x"}
    manager = SearchManager(None, None, ServiceSettings(state_dir=tmp_path))
    both_writing = threading.Barrier(2, timeout=10)
    real_open = tarfile.open

    def open_together(*args, **kwargs):   # both requests are building the archive before either finishes
        tar = real_open(*args, **kwargs)
        both_writing.wait()
        return tar
    monkeypatch.setattr(searches.tarfile, "open", open_together)
    with ThreadPoolExecutor(2) as pool:
        archives = list(pool.map(lambda _: manager.best_archive(search, out / "best"), range(2)))
    assert archives[0] == archives[1] == out / "search_x-best.v2.tar.gz"
    with real_open(archives[0]) as tar:
        assert "search_x-best/student/model.safetensors" in tar.getnames()
    assert sorted(p.name for p in out.iterdir()) == ["best", "search_x-best.v2.tar.gz"]   # no temporary file left
