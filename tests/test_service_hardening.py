"""Hostile and careless requests (issue 19): each is answered with its documented JSON 4xx, bounded in
memory and time, and reveals nothing of the server (paths, tracebacks) or of other keys. Searches run on
a scripted job backend here (the Ray path itself is covered by test_service_api / _integration);
every test that touches the database runs on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autodistill.meta import META_DATASET_DIR
from service import ServiceSettings, create_app
from service_support import ScriptedBackend, small_jsonl


def _app(state_dir: Path, database_url: str | None = None, backend=None, **settings):
    values = {"state_dir": state_dir, "meta_features_backbone": None, "poll_seconds": 0.2,
              "database_url": database_url, **settings}
    return create_app(ServiceSettings(**values), backend=backend or ScriptedBackend())


class Client(TestClient):
    """A TestClient with three keys (alice, bob: users; root: admin) as ready-made headers."""
    keys: dict[str, dict[str, str]]


def _client(app) -> Client:
    client = Client(app)
    client.__enter__()
    store = app.state.store
    client.keys = {name: {"Authorization": f"Bearer {store.create_key(name, scope)[0]}"}
                   for name, scope in (("alice", "user"), ("bob", "user"), ("root", "admin"))}
    return client


@pytest.fixture
def api(tmp_path, database_url):
    client = _client(_app(tmp_path / "svc", database_url))
    yield client
    client.__exit__(None, None, None)


def upload(client, headers, path: Path, **data):
    with open(path, "rb") as fh:
        return client.post("/datasets", files={"file": (path.name, fh)}, data=data, headers=headers)


def _is_json_error(r, status: int, field: str | None = "__any__") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) >= {"error", "detail", "field"}, body
    if field != "__any__":
        assert body["field"] == field, body
    return body


# --------------------------------------------------------------------------- 1. ingest bounded by its caps
class RecordingTokenizer:
    """The real tokenizer, recording the longest text it was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, a, b=None, **kw):
        texts = [a] if isinstance(a, str) else list(a) + list(b or [])
        self.longest = max([self.longest] + [len(t) for t in texts])
        return self.tokenizer(a, b, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_meta_features_tokenize_a_bounded_prefix_of_a_huge_row(tmp_path):
    from autodistill.config import DataConfig
    from autodistill.data import load_task_data
    from autodistill.meta.features import MAX_TEXT_CHARS, compute_meta_features
    from autodistill.models import load_tokenizer
    path = small_jsonl(tmp_path / "huge.jsonl", n=40)
    with open(path, "a", encoding="utf-8") as fh:   # one 3 MB line of distinct words
        fh.write(json.dumps({"text": " ".join(f"w{i}" for i in range(400_000)), "label": 1}) + "\n")
    task = load_task_data(DataConfig(train=str(path), validation_fraction=0.2))
    assert max(len(t) for t in task.train.text_a) > 2_000_000
    tok = RecordingTokenizer(load_tokenizer("default"))
    feats = compute_meta_features(task, tok)
    assert tok.longest <= MAX_TEXT_CHARS and feats["tok_len_max"] > 100


def _parquet(path: Path, texts, labels) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": texts, "label": labels}), path, compression="zstd")
    return path


def test_parquet_is_capped_by_rows_and_by_decoded_size(tmp_path, database_url):
    import numpy as np
    import pyarrow as pa
    client = _client(_app(tmp_path / "svc", database_url, max_upload_mb=2.0))
    try:
        n = 1_000_000   # a few KB on disk
        texts = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 2, type=pa.int8()), pa.array(["good", "bad"]))
        rows = _parquet(tmp_path / "rows.parquet", texts, pa.array(np.arange(n) % 2))
        assert rows.stat().st_size < 100_000
        body = _is_json_error(upload(client, client.keys["alice"], rows), 413, "file")
        assert "rows" in body["detail"]
        # 1,000 rows of one 200 KB text: tiny compressed, 200 MB decoded (the cap is 2 MB)
        big = "lorem ipsum " * 17_000
        texts = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1000), type=pa.int8()), pa.array([big]))
        blown = _parquet(tmp_path / "decoded.parquet", texts, pa.array(np.arange(1000) % 2))
        assert blown.stat().st_size < 2**20
        body = _is_json_error(upload(client, client.keys["alice"], blown), 413, "file")
        assert "decoded" in body["detail"]
        ok = _parquet(tmp_path / "ok.parquet", [f"item {i} {'good' if i % 2 else 'bad'}" for i in range(60)],
                      [i % 2 for i in range(60)])
        assert upload(client, client.keys["alice"], ok).status_code == 201
        assert client.get("/datasets", headers=client.keys["alice"]).json()["total"] == 1
    finally:
        client.__exit__(None, None, None)


def test_the_caps_measure_a_file_in_the_format_it_is_read_in(tmp_path, database_url):
    """A Parquet file named .jsonl with columns.format "parquet", and a CSV whose rows end in a lone carriage
    return, were measured as JSON lines (one \\n-line each) and then loaded whole: both are refused."""
    import numpy as np
    import pyarrow as pa
    client = _client(_app(tmp_path / "svc", database_url, max_rows=100))
    try:
        n = 20_000
        texts = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 2, type=pa.int8()), pa.array(["good", "bad"]))
        disguised = _parquet(tmp_path / "train.jsonl", texts, pa.array(np.arange(n) % 2))
        body = _is_json_error(upload(client, client.keys["alice"], disguised, columns=json.dumps({"format": "parquet"})),
                              413, "file")
        assert "rows" in body["detail"]
        carriage = tmp_path / "train.csv"
        carriage.write_bytes(b"text,label\r" + b"".join(b"item %d,%d\r" % (i, i % 2) for i in range(150)))
        assert _is_json_error(upload(client, client.keys["alice"], carriage), 413, "file")
        windows = tmp_path / "few.csv"   # \r\n is one line end: 90 rows fit
        windows.write_bytes(b"text,label\r\n" + b"".join(b"item %d %s,%d\r\n" % (i, b"good" if i % 2 else b"bad", i % 2)
                                                       for i in range(90)))
        assert upload(client, client.keys["alice"], windows).status_code == 201
    finally:
        client.__exit__(None, None, None)


def test_an_id_no_row_can_have_is_not_found_on_every_database(tmp_path, database_url):
    """A NUL byte in an id made PostgreSQL refuse the query (503) where SQLite answered 404."""
    client = _client(_app(tmp_path / "svc", database_url))
    try:
        alice = client.keys["alice"]
        for path in ("/searches/a%00b", "/searches/a%00b/trials", "/searches/a%00b/best", "/datasets/ds%00x"):
            _is_json_error(client.get(path, headers=alice), 404)
        _is_json_error(client.delete("/datasets/ds%00x", headers=alice), 404)
        _is_json_error(client.delete("/searches/a%00b", headers=alice), 404)
        r = client.post("/recommendations", json={"dataset_id": "ds\u0000x"}, headers=alice)
        assert r.status_code in (404, 422), r.text
        r = client.post("/searches", json={"dataset_id": "ds\u0000x"}, headers=alice)
        assert r.status_code in (404, 422), r.text
    finally:
        client.__exit__(None, None, None)


def test_an_api_key_with_too_many_idempotency_keys_remembered_gets_a_429(tmp_path, database_url):
    client = _client(_app(tmp_path / "svc", database_url, max_idempotency_keys_per_key=1))
    try:
        alice = client.keys["alice"]
        first = upload(client, {**alice, "Idempotency-Key": "a"}, small_jsonl(tmp_path / "a.jsonl"), name="a")
        assert first.status_code == 201, first.text
        body = _is_json_error(upload(client, {**alice, "Idempotency-Key": "b"}, small_jsonl(tmp_path / "b.jsonl"),
                                     name="b"), 429, "Idempotency-Key")
        assert "this API key" in body["detail"]
        assert upload(client, {**alice, "Idempotency-Key": "a"}, small_jsonl(tmp_path / "a.jsonl"),
                      name="a").headers.get("Idempotent-Replayed") == "true"
        assert upload(client, alice, small_jsonl(tmp_path / "c.jsonl"), name="c").status_code == 201
    finally:
        client.__exit__(None, None, None)


def test_text_files_are_capped_by_rows(tmp_path, database_url):
    client = _client(_app(tmp_path / "svc", database_url, max_rows=100))
    try:
        _is_json_error(upload(client, client.keys["alice"], small_jsonl(tmp_path / "many.jsonl", n=150)), 413, "file")
        assert upload(client, client.keys["alice"], small_jsonl(tmp_path / "few.jsonl", n=90)).status_code == 201
    finally:
        client.__exit__(None, None, None)


def test_reading_a_dataset_is_bounded_in_time(tmp_path):
    client = _client(_app(tmp_path / "svc", ingest_timeout_s=0.01))   # far below what 3,000 rows take
    try:
        r = upload(client, client.keys["alice"], small_jsonl(tmp_path / "d.jsonl", n=3000))
        assert "took longer" in _is_json_error(r, 422, "file")["detail"]
        assert client.get("/datasets", headers=client.keys["alice"]).json()["total"] == 0
        assert not any((tmp_path / "svc" / "datasets").glob("*/*"))
    finally:
        client.__exit__(None, None, None)
    # the killed worker is replaced: the next dataset is read
    client = _client(_app(tmp_path / "svc2"))
    try:
        assert upload(client, client.keys["alice"], small_jsonl(tmp_path / "e.jsonl")).status_code == 201
    finally:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- 2. the key before the body; capped bodies
def _asgi_post(app, path: str, headers: list[tuple[bytes, bytes]], chunks: int, chunk: bytes, first: bytes = b""):
    """POST ``first`` + ``chunks`` x ``chunk`` to the ASGI app directly; returns (status, body, chunks the app
    read)."""
    read, sent = 0, []

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": (first if read == 1 else b"") + chunk, "more_body": read < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1234),
             "headers": [(b"host", b"test"), (b"transfer-encoding", b"chunked"), *headers]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read


def test_no_body_is_read_before_the_key_and_every_body_is_capped(api):
    app = api.app
    one_mb = b"[" + b"1," * (2**19 - 1) + b"1"
    json_ct = (b"content-type", b"application/json")
    # 150 MB, chunked, without a key: 401 before a single chunk is read
    status, body, read = _asgi_post(app, "/recommendations", [json_ct], 150, one_mb)
    assert (status, body["error"], read) == (401, "unauthorized", 0)
    status, body, read = _asgi_post(app, "/datasets", [json_ct, (b"authorization", b"Bearer adk_wrong")], 150, one_mb)
    assert (status, read) == (401, 0)
    # with a key: cut at the JSON cap (256 KB by default), not after 150 MB
    key = api.keys["alice"]["Authorization"].encode()
    status, body, read = _asgi_post(app, "/recommendations", [json_ct, (b"authorization", key)], 150, one_mb)
    assert (status, body["error"], read) == (413, "payload_too_large", 1)
    status, body, read = _asgi_post(app, "/searches", [(b"authorization", key)], 150, one_mb)   # no content-type
    assert (status, read) == (413, 1)
    # uploads: cut at the upload cap
    multipart = (b"content-type", b"multipart/form-data; boundary=b")
    cap_chunks = int(app.state.settings.max_upload_mb) + 2
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    status, body, read = _asgi_post(app, "/datasets", [multipart, (b"authorization", key)], 1000, one_mb, head)
    assert status == 413 and read <= cap_chunks
    # a declared Content-Length over the cap: refused unread
    r = api.post("/recommendations", content=b"{}", headers={**api.keys["alice"], "content-type": "application/json",
                                                             "content-length": str(2**30)})
    _is_json_error(r, 413, "body")


@pytest.mark.parametrize("path", ["/datasets", "/recommendations", "/searches"])
def test_deep_json_bodies_are_422_not_500(api, path):
    deep = "[" * 100_000 + "]" * 100_000
    r = api.post(path, content=deep, headers={**api.keys["alice"], "content-type": "application/json"})
    body = _is_json_error(r, 422, "body")
    assert "nested" in body["detail"]
    shallow = {"dataset_id": "nope", "constraints": {"config": {"student.num_layers": [[[[1]]]]}}}   # ordinary nesting passes
    assert api.post("/recommendations", json=shallow, headers=api.keys["alice"]).status_code == 404


# --------------------------------------------------------------------------- 3-4. the hub: off, bounded, never a path
@pytest.fixture
def black_hole():
    """A TCP server that accepts connections and never answers (a hub that hangs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    srv.close()


@pytest.fixture
def planted_csv(tmp_path, monkeypatch):
    """A file `leak/tmp.csv` relative to the service's working folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leak").mkdir()
    (tmp_path / "leak" / "tmp.csv").write_text(
        "text,label\n" + "".join(f"secret row {i},SECRET_LABEL_{i % 2}\n" for i in range(40)), encoding="utf-8")
    return "leak/tmp.csv"


def test_a_hub_name_is_never_a_path_and_the_hub_is_off_by_default(api, planted_csv):
    for name in (planted_csv, "leak", "csv"):
        r = api.post("/datasets", json={"hf_name": name}, headers=api.keys["alice"])
        body = _is_json_error(r, 403, "hf_name")
        assert "SECRET" not in r.text and "hub" in body["detail"]
    assert api.get("/datasets", headers=api.keys["alice"]).json()["total"] == 0


def test_a_hub_that_never_answers_holds_no_request_thread(tmp_path, database_url, black_hole, planted_csv,
                                                          monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)   # the tests run offline; this hub is local
    client = _client(_app(tmp_path / "svc", database_url, hub_enabled=True, hub_endpoint=black_hole,
                          hub_timeout_s=3, hub_workers=1))
    try:
        answers = {}

        def hub_request(name):
            answers[name] = client.post("/datasets", json={"hf_name": name}, headers=client.keys["alice"])
        first = threading.Thread(target=hub_request, args=(planted_csv,))
        first.start()
        deadline = time.time() + 30
        while client.app.state.hub.busy == 0:   # the hub worker has taken the first request
            assert time.time() < deadline
            time.sleep(0.05)
        # while it hangs: the service answers, and further hub requests are turned away at once
        assert client.get("/healthz").status_code == 200
        assert client.get("/datasets", headers=client.keys["bob"]).status_code == 200
        hub_request("org/other")
        _is_json_error(answers["org/other"], 429, "hf_name")
        assert first.is_alive()   # the first is still waiting on the hub
        first.join(60)
        body = _is_json_error(answers[planted_csv], 422, "hf_name")
        assert "SECRET" not in answers[planted_csv].text and "did not answer" in body["detail"]
        assert not any((tmp_path / "svc" / "datasets").glob("*/*"))
    finally:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- 8. no 500s
def test_hostile_data_is_a_json_4xx(api, tmp_path):
    alice = api.keys["alice"]
    deep = small_jsonl(tmp_path / "deep.jsonl", n=40)
    with open(deep, "a", encoding="utf-8") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")
    body = _is_json_error(upload(api, alice, deep), 422, "file")
    assert "line 41" in body["detail"]
    huge = tmp_path / "huge.csv"
    huge.write_text("text,label\n" + "".join(f"row {i},{[1e308, -1e308, 0.5][i % 3]}\n" for i in range(60)),
                    encoding="utf-8")
    r = upload(api, alice, huge, columns=json.dumps({"task": "regression"}))
    assert r.status_code in (201, 422) and r.headers["content-type"].startswith("application/json"), r.text
    wide = small_jsonl(tmp_path / "wide.jsonl", n=40)   # a line of 1M keys: read in linear time, a 422
    with open(wide, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({f"k{i}": 0 for i in range(1_000_000)}) + "\n")
    assert "line 41" in _is_json_error(upload(api, alice, wide), 422, "file")["detail"]
    r = api.post("/datasets", json={"path": "ok\u0000/train.jsonl"}, headers=alice)
    assert r.status_code in (403, 422) and r.json()["field"] == "path"


def test_an_unexpected_error_is_a_json_500_without_details(api, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("/srv/secret/path exploded")
    monkeypatch.setattr(api.app.state.store, "list_datasets", boom)
    client = TestClient(api.app, raise_server_exceptions=False)
    r = client.get("/datasets", headers=api.keys["alice"])
    body = _is_json_error(r, 500)
    assert body["error"] == "internal_error" and "secret" not in r.text and "Traceback" not in r.text


def _read_only_url(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        return database_url.replace("sqlite:///", "sqlite:///file:") + "?mode=ro&uri=true"
    from sqlalchemy.engine import make_url
    url = make_url(database_url)
    options = " ".join(filter(None, [url.query.get("options"), "-c default_transaction_read_only=on"]))
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


def test_a_read_only_database_is_unhealthy_and_writes_are_json_503(tmp_path, database_url):
    with _client(_app(tmp_path / "svc", database_url)) as first:   # creates the schema and a key
        headers = first.keys["alice"]
        assert upload(first, headers, small_jsonl(tmp_path / "a.jsonl")).status_code == 201
    ro = TestClient(_app(tmp_path / "svc", _read_only_url(database_url)), raise_server_exceptions=False)
    with ro:
        _is_json_error(ro.get("/healthz"), 503)
        assert ro.get("/datasets", headers=headers).json()["total"] == 1   # reads still work
        r = upload(ro, headers, small_jsonl(tmp_path / "b.jsonl", seed=1))
        assert _is_json_error(r, 503)["error"] == "unavailable"


# --------------------------------------------------------------------------- 5. nothing of another key in recommendations
SECRET_TEMPERATURE = 5.5   # no committed candidate distils at τ = 5.5: this pipeline exists only in alice's search


def _finished_search_of(client, owner_key: dict, dataset_id: str, tmp_path: Path) -> str:
    """A succeeded search of ``dataset_id`` whose trial records are real committed records re-dressed as a
    pipeline only this search ran (its own teacher path and data path on the server)."""
    from autodistill.records import RecordStore
    store = client.app.state.store
    owner = store.key_for_secret(owner_key["Authorization"].split()[1])["id"]
    out = tmp_path / "alice-search"
    records = RecordStore(out)
    for line in (META_DATASET_DIR / "runs" / "mr.jsonl").read_text(encoding="utf-8").splitlines()[:6]:
        rec = json.loads(line)
        rec["config"]["loss"]["prediction"]["temperature"] = SECRET_TEMPERATURE
        rec["config"]["teachers"][0]["backbone"] = "/srv/alice/private-teacher"
        rec["config"]["data"]["train"] = "/srv/alice/private-data.jsonl"
        rec.update(candidate="alice-secret-pipeline", config_hash=None, status="completed")
        records.append(rec)
    now = time.time()
    sid = "search_alice"
    assert store.add_search({"id": sid, "owner": owner, "dataset_id": dataset_id, "state": "succeeded",
                             "request": {}, "out_dir": str(out), "progress": {}, "best": None, "error": None,
                             "submissions": 1, "created_at": now, "started_at": now, "finished_at": now,
                             "updated_at": now, "folded": False}) == "added"
    return sid


def test_recommendations_reveal_no_other_keys_datasets_or_configs(tmp_path, database_url):
    base = [META_DATASET_DIR / "runs" / f"{d}.jsonl" for d in ("cr", "mr", "sst2")]
    client = _client(_app(tmp_path / "svc", database_url, base_records=[p for p in base if p.exists()]))
    try:
        data = small_jsonl(tmp_path / "same.jsonl", n=60)
        mine = upload(client, client.keys["alice"], data).json()["id"]
        theirs = upload(client, client.keys["bob"], data).json()["id"]   # the same data: distance 0 to alice's
        _finished_search_of(client, client.keys["alice"], mine, tmp_path)
        assert client.post("/meta-model/refit", headers=client.keys["root"]).status_code == 200

        def recommend(who, dataset_id, **constraints):
            r = client.post("/recommendations", json={"dataset_id": dataset_id, "top_k": 50,
                                                      "constraints": constraints}, headers=client.keys[who])
            assert r.status_code == 200, r.text
            return r
        own = recommend("alice", mine, config={"loss.prediction.temperature": SECRET_TEMPERATURE}).json()["recommendations"]
        assert [x["candidate"] for x in own] == ["alice-secret-pipeline"]   # alice sees her own pipeline
        assert own[0]["config"]["data"]["train"] is None                    # never a server data path
        assert f"svc-{mine}" in [n["dataset"] for n in own[0]["why"]["nearest_datasets"]]
        other = recommend("bob", theirs, config={"loss.prediction.temperature": SECRET_TEMPERATURE})
        assert other.json()["recommendations"] == []
        everything = recommend("bob", theirs)
        assert everything.json()["recommendations"]
        for text in (f"svc-{mine}", "alice", "/srv/"):
            assert text not in everything.text
        # where the model extrapolates is judged against the datasets bob may see: alice's (the same 60 rows)
        # would put his size inside the range, and its bounds would show her dataset's meta-features
        outside = everything.json()["recommendations"][0]["why"]["meta_features_outside_training"]
        assert outside["log_n_train"]["value"] < outside["log_n_train"]["seen"][0]
        assert "meta_features_outside_training" not in own[0]["why"] or "log_n_train" not in \
            own[0]["why"]["meta_features_outside_training"]                   # alice sees her own dataset's range
    finally:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- 6-7. searches bounded; backbones allowed
def _search_body(dataset_id: str, **extra) -> dict:
    return {"dataset_id": dataset_id, "space": "cpu-fast", "trials": 2, **extra}


@pytest.fixture
def dataset_of(api, tmp_path):
    def make(who: str = "alice", seed: int = 0) -> str:
        r = upload(api, api.keys[who], small_jsonl(tmp_path / f"{who}{seed}.jsonl", seed=seed))
        assert r.status_code == 201, r.text
        return r.json()["id"]
    return make


def test_searches_are_capped_per_key_and_overall(tmp_path, database_url):
    client = _client(_app(tmp_path / "svc", database_url, max_searches_per_key=1, max_searches_total=2))
    try:
        ids = {}
        for who in ("alice", "bob", "root"):
            ids[who] = upload(client, client.keys[who], small_jsonl(tmp_path / f"{who}.jsonl")).json()["id"]
        assert client.post("/searches", json=_search_body(ids["alice"]), headers=client.keys["alice"]).status_code == 202
        r = client.post("/searches", json=_search_body(ids["alice"]), headers=client.keys["alice"])
        assert _is_json_error(r, 429)["error"] == "too_many_requests" and r.headers["retry-after"]
        assert client.post("/searches", json=_search_body(ids["bob"]), headers=client.keys["bob"]).status_code == 202
        _is_json_error(client.post("/searches", json=_search_body(ids["root"]), headers=client.keys["root"]), 429)
        backend = client.app.state.searches.backend
        first = next(iter(backend.states))
        backend.states[first] = "succeeded"   # one ends: room again
        client.get(f"/searches/{first}", headers=client.keys["alice"])
        assert client.post("/searches", json=_search_body(ids["root"]), headers=client.keys["root"]).status_code == 202
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("config,field", [
    ({"student": {"kind": "fresh", "hidden_size": 64, "intermediate_size": 10**12}}, "config.student.intermediate_size"),
    ({"student": {"num_layers": 10**6}}, "config.student.num_layers"),
    ({"teachers": [{"epochs": 1e6}]}, "config.teachers.0.epochs"),
    ({"optim": {"epochs": 1e6}}, "config.optim.epochs"),
    ({"optim": {"batch_size": 10**7}}, "config.optim.batch_size"),
    ({"teachers": [{"backbone": "/etc"}]}, "config.teachers.0.backbone"),
    ({"teachers": [{"backbone": "bert-base-uncased"}]}, "config.teachers.0.backbone"),
    ({"augmentation": {"augmenters": [{"name": "contextual", "mlm_model": "/root"}]}},
     "config.augmentation.augmenters.0.mlm_model")])
def test_search_sizes_and_backbones_are_bounded(api, dataset_of, config, field):
    r = api.post("/searches", json=_search_body(dataset_of(), config=config), headers=api.keys["alice"])
    _is_json_error(r, 422, field)
    assert not api.app.state.searches.backend.submitted


def test_backbone_refusals_do_not_tell_what_exists(api, dataset_of, tmp_path):
    ds = dataset_of()
    details = set()
    for backbone in ("/etc", "/no/such/folder", str(tmp_path), "../../etc"):
        r = api.post("/searches", json=_search_body(ds, config={"teachers": [{"backbone": backbone}]}),
                     headers=api.keys["alice"])
        body = _is_json_error(r, 422, "config.teachers.0.backbone")
        details.add(body["detail"])
        assert "/" not in body["detail"].split(":", 1)[1]   # no path in the explanation
    assert len(details) == 1


def _planted_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config asks for its own code (auto_map); that code would write ``marker``."""
    folder.mkdir(parents=True)
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "evil.py").write_text(code + "class EvilConfig: pass\nclass EvilModel: pass\n", encoding="utf-8")
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
            "AutoModelForSequenceClassification": "evil.EvilModel", "AutoTokenizer": ["evil.EvilConfig", None]}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto}), encoding="utf-8")
    return folder


def test_no_code_runs_from_a_planted_model_folder(tmp_path, database_url):
    from autodistill.config import StudentConfig
    from autodistill.models import load_classifier, load_tokenizer, student_parameters
    marker = tmp_path / "code-ran"
    root = tmp_path / "backbones"
    planted = _planted_model(root / "evil", marker)
    client = _client(_app(tmp_path / "svc", database_url, backbone_roots=[root]))
    try:
        ds = upload(client, client.keys["alice"], small_jsonl(tmp_path / "d.jsonl")).json()["id"]
        body = _search_body(ds, config={"teachers": [{"backbone": "evil"}]})   # under a root: a search may name it
        r = client.post("/searches", json=body, headers=client.keys["alice"])
        assert r.status_code == 202 and str(root) not in r.text   # the server's folder is not shown
        written = json.loads(next((tmp_path / "svc" / "searches").glob("*/request_config.json")).read_text())
        assert written["teachers"][0]["backbone"] == str(planted.resolve())
    finally:
        client.__exit__(None, None, None)
    for load in (lambda: load_tokenizer(str(planted)), lambda: load_classifier(str(planted), 2, "classification"),
                 lambda: student_parameters(str(planted), StudentConfig(), 2)):   # what the search job does
        with pytest.raises(Exception):
            load()
    assert not marker.exists()


def test_a_search_is_stopped_past_its_time_budget(api, dataset_of):
    r = api.post("/searches", json=_search_body(dataset_of(), time_budget=30), headers=api.keys["alice"])
    sid = r.json()["id"]
    manager = api.app.state.searches
    job = manager.backend.submitted[-1][1]
    assert job[job.index("--time-budget") + 1] == "30.0"
    manager.backend.states[sid] = "running"
    api.get(f"/searches/{sid}", headers=api.keys["alice"])
    grace = api.app.state.settings.search_grace_s
    manager.store.update_search(sid, started_at=time.time() - 30 - grace - 1)   # e.g. a teacher fine-tune that runs on
    body = api.get(f"/searches/{sid}", headers=api.keys["alice"]).json()
    assert body["state"] == "failed" and "time budget" in body["error"]
    assert manager.backend.states[sid] == "cancelled"   # the Ray job was stopped


def test_a_search_stopped_for_time_by_the_monitor_reads_failed_in_a_concurrent_request(api, dataset_of):
    """The monitor thread stopped the job for its time budget (Ray says cancelled) but has not written its
    state yet when a request refreshes the same search: that is the time-budget failure, not a user's cancel."""
    sid = api.post("/searches", json=_search_body(dataset_of(), time_budget=30), headers=api.keys["alice"]).json()["id"]
    manager = api.app.state.searches
    manager.backend.states[sid] = "running"
    api.get(f"/searches/{sid}", headers=api.keys["alice"])
    grace = api.app.state.settings.search_grace_s
    manager.store.update_search(sid, started_at=time.time() - 30 - grace - 1)
    manager.backend.states[sid] = "cancelled"           # the monitor's stop, its write still pending
    body = api.get(f"/searches/{sid}", headers=api.keys["alice"]).json()
    assert body["state"] == "failed" and "time budget" in body["error"]


def test_a_search_without_a_budget_gets_its_spaces_within_the_servers(tmp_path):
    from autodistill.search.space import SearchSpace
    space = SearchSpace.load("cpu-fast").budget.time_budget_s
    for cap, expected in ((10 * space, space), (space / 2, space / 2)):
        client = _client(_app(tmp_path / f"svc{cap}", max_time_budget_s=cap))
        try:
            ds = upload(client, client.keys["alice"], small_jsonl(tmp_path / "d.jsonl")).json()["id"]
            assert client.post("/searches", json=_search_body(ds), headers=client.keys["alice"]).status_code == 202
            job = client.app.state.searches.backend.submitted[-1][1]
            assert float(job[job.index("--time-budget") + 1]) == expected
        finally:
            client.__exit__(None, None, None)


# --------------------------------------------------------------------------- 9. a search and a delete of its dataset
def test_a_delete_between_the_check_and_the_insert_wins_cleanly(api, dataset_of):
    ds = dataset_of()
    manager = api.app.state.searches
    real_create = manager.create
    deleted = {}

    def create_after_a_delete(*args):   # the DELETE lands after the search's checks
        deleted["status"] = api.delete(f"/datasets/{ds}", headers=api.keys["alice"]).status_code
        return real_create(*args)
    manager.create = create_after_a_delete
    try:
        r = api.post("/searches", json=_search_body(ds), headers=api.keys["alice"])
    finally:
        manager.create = real_create
    assert deleted["status"] == 204
    _is_json_error(r, 404, "dataset_id")
    assert not manager.backend.submitted and api.get("/searches", headers=api.keys["alice"]).json()["total"] == 0


def test_a_dataset_a_search_references_cannot_be_deleted(api, dataset_of):
    ds = dataset_of()
    assert api.post("/searches", json=_search_body(ds), headers=api.keys["alice"]).status_code == 202
    _is_json_error(api.delete(f"/datasets/{ds}", headers=api.keys["alice"]), 409)
    assert api.get(f"/datasets/{ds}", headers=api.keys["alice"]).status_code == 200


def test_concurrent_search_creates_and_deletes_never_orphan_a_search(database_url):
    from service import db
    from service.store import Store
    engine = db.make_engine(database_url)
    db.migrate(engine)
    store = Store(engine)
    try:
        for i in range(12):
            did = f"ds{i}"
            store.add_dataset({"id": did, "owner": "k", "name": did, "source_kind": "upload", "source": "x",
                               "data_config": {}, "fingerprint": "f", "stats": {}, "meta_features": {},
                               "created_at": time.time()})
            now = time.time()
            row = {"id": f"s{i}", "owner": "k", "dataset_id": did, "state": "queued", "request": {}, "out_dir": "/x",
                   "progress": {}, "best": None, "error": None, "submissions": 1, "created_at": now,
                   "started_at": None, "finished_at": None, "updated_at": now, "folded": False}
            barrier, out = threading.Barrier(2), {}

            def add():
                barrier.wait()
                out["add"] = store.add_search(row)

            def remove():
                barrier.wait()
                out["delete"] = store.delete_dataset("k", did)
            threads = [threading.Thread(target=add), threading.Thread(target=remove)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert (out["add"], out["delete"]) in (("added", "in_use"), ("no_dataset", "deleted")), out
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- 10. idempotency: retention, truthful replays
def test_a_replay_after_the_resource_was_deleted_is_410(api, tmp_path):
    headers = {**api.keys["alice"], "Idempotency-Key": "u1"}
    path = small_jsonl(tmp_path / "i.jsonl")
    first = upload(api, headers, path)
    assert first.status_code == 201
    assert api.delete(first.headers["location"], headers=api.keys["alice"]).status_code == 204
    again = upload(api, headers, path)
    assert _is_json_error(again, 410, "Idempotency-Key")["error"] == "gone"
    assert again.headers["idempotent-replayed"] == "true"


def test_idempotency_records_expire(api, tmp_path):
    from service import db
    headers = {**api.keys["alice"], "Idempotency-Key": "u2"}
    path = small_jsonl(tmp_path / "i.jsonl")
    first = upload(api, headers, path)
    assert upload(api, headers, path).headers.get("idempotent-replayed") == "true"
    retention = api.app.state.settings.idempotency_retention_s
    with api.app.state.store.engine.begin() as conn:   # the record is now older than the retention
        conn.execute(db.idempotency.update().values(created_at=time.time() - retention - 1))
    later = upload(api, headers, path)
    assert later.status_code == 201 and "idempotent-replayed" not in later.headers
    assert later.json()["id"] != first.json()["id"]
    with api.app.state.store.engine.begin() as conn:
        conn.execute(db.idempotency.update().values(created_at=time.time() - retention - 1))
    assert api.app.state.store.idempotency_purge(retention) == 1


# --------------------------------------------------------------------------- 11. no server paths or tracebacks
def test_errors_and_results_carry_no_server_paths(api, dataset_of, tmp_path):
    state = str(api.app.state.settings.state_dir.resolve())
    no_label = tmp_path / "x.jsonl"
    no_label.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    r = upload(api, api.keys["alice"], no_label)
    assert r.status_code == 422 and "x.jsonl" in r.json()["detail"]
    assert state not in r.text and str(tmp_path) not in r.text and "/datasets/" not in r.text
    # a failed search: the job log (command line, traceback, paths) stays in the server log
    ds = dataset_of()
    sid = api.post("/searches", json=_search_body(ds), headers=api.keys["alice"]).json()["id"]
    backend = api.app.state.searches.backend
    out_dir = api.app.state.store.get_search(None, sid)["out_dir"]
    backend.log_text = (f"$ /venv/bin/python -m autodistill.cli search --data {state}/datasets/{ds}/train.jsonl\n"
                        f"Traceback (most recent call last):\n  File \"/work/main/autodistill/search/runner.py\", "
                        f"line 3, in run\nValueError: no usable rows in {out_dir}/data.jsonl\n")
    backend.states[sid] = "failed"
    body = api.get(f"/searches/{sid}", headers=api.keys["alice"]).json()
    assert body["state"] == "failed" and "no usable rows" in body["error"]
    for leak in ("Traceback", "/work/", "/venv/", state, "File "):
        assert leak not in body["error"], body["error"]
    # the best of a finished search: its config names the dataset, not the server's file
    sid = api.post("/searches", json=_search_body(ds), headers=api.keys["alice"]).json()["id"]
    best = Path(api.app.state.store.get_search(None, sid)["out_dir"]) / "best"
    (best / "student").mkdir(parents=True)
    (best / "config.yaml").write_text(f"data:\n  train: {state}/datasets/{ds}/train.jsonl\n", encoding="utf-8")
    backend.states[sid] = "succeeded"
    r = api.get(f"/searches/{sid}/best", headers=api.keys["alice"])
    assert r.status_code == 200 and r.json()["config"]["data"]["train"] == f"dataset:{ds}" and state not in r.text


def test_a_path_reference_answers_with_the_callers_names(tmp_path, database_url):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    good = small_jsonl(root / "sub" / "good.jsonl")
    client = _client(_app(tmp_path / "svc", database_url, allowed_roots=[root]))
    try:
        r = client.post("/datasets", json={"path": "sub/x.jsonl"}, headers=client.keys["alice"])
        assert r.status_code == 422 and "sub/x.jsonl" in r.json()["detail"] and str(root) not in r.text
        r = client.post("/datasets", json={"path": "sub/good.jsonl"}, headers=client.keys["alice"])
        assert r.status_code == 201 and r.json()["source"] == "sub/good.jsonl" and str(good) not in r.text
    finally:
        client.__exit__(None, None, None)


# --------------------------------------------------------------------------- 13. private state
def test_state_is_private(tmp_path):
    client = _client(_app(tmp_path / "svc"))
    try:
        ds = upload(client, client.keys["alice"], small_jsonl(tmp_path / "d.jsonl")).json()["id"]
        r = client.post("/searches", json=_search_body(ds), headers=client.keys["alice"])
        assert r.status_code == 202
    finally:
        client.__exit__(None, None, None)
    svc = tmp_path / "svc"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)
    assert mode(svc) == 0o700 and mode(svc / "service.db") == 0o600
    assert mode(svc / "datasets" / ds) == 0o700 and mode(next((svc / "datasets" / ds).iterdir())) == 0o600
    search_dir = next((svc / "searches").iterdir())
    assert mode(svc / "searches") == 0o700 and mode(search_dir) == 0o700


# --------------------------------------------------------------------------- 12. what the embedded Ray head listens on
RAY_FIXED_PORTS = {6379, 8265, 10001, 44217, 44227, 52365, 8076}   # Ray's defaults: any other Ray collides


def _listeners(pgid: int) -> list[tuple[str, int, str]]:
    """(address, port, process) of every TCP listener of the process group ``pgid`` (from `ss`)."""
    import re
    import subprocess
    pids = set(subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split())
    out = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        local = line.split()[3]
        procs = re.findall(r'\("([^"]+)",pid=(\d+)', line)
        if any(pid in pids for _, pid in procs):
            addr, _, port = local.rpartition(":")
            out.append((addr.strip("[]").removeprefix("::ffff:"), int(port), procs[0][0]))
    return out


def test_the_embedded_ray_head_listens_on_loopback_only(tmp_path):
    from service.ray_backend import LocalRayHead
    head = LocalRayHead(tmp_path / "state", num_cpus=1)
    info = head.start()
    try:
        time.sleep(2)   # the agents open their ports a little after the dashboard answers
        listeners = _listeners(os.getpgid(info.pid))
        assert len(listeners) >= 6, listeners   # GCS, raylet x2, dashboard, its agent, runtime-env agent, ...
        assert all(addr == "127.0.0.1" for addr, _, _ in listeners), listeners
        assert not {port for _, port, _ in listeners} & RAY_FIXED_PORTS, listeners
        temp = Path(info.temp_dir)
        assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700   # Ray's own 0777 folder sits inside ours
        assert stat.S_IMODE((tmp_path / "state" / "ray" / "head.json").stat().st_mode) == 0o600
    finally:
        head.stop()


def test_a_slow_embedded_head_is_waited_for_never_replaced(tmp_path, monkeypatch):
    """A head that answers slowly (2 busy cores) used to be taken for dead: a second head started beside it,
    knew none of its jobs, and every search was submitted again. A recorded head whose process lives is
    waited for (then an error); a new one starts only when that process is gone."""
    import subprocess
    import sys

    from service.ray_backend import HeadInfo, LocalRayHead, free_ports
    head = LocalRayHead(tmp_path / "state")
    started = []
    monkeypatch.setattr(LocalRayHead, "start", lambda self, timeout=120.0: started.append(timeout) or "new head")
    # a process that looks like `ray start --head` but whose dashboard never answers
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "start", "--head",
                               f"--temp-dir={tmp_path}"])
    while not Path(f"/proc/{silent.pid}/cmdline").read_bytes():   # until it has exec'd
        time.sleep(0.05)
    try:
        head.dir.mkdir(parents=True)
        head.info_path.write_text(HeadInfo(f"http://127.0.0.1:{free_ports(1)[0]}", "127.0.0.1:1", silent.pid,
                                           "t", str(tmp_path)).to_json())
        with pytest.raises(RuntimeError, match="runs but has not answered"):
            head.ensure(timeout=2)
        assert not started
        # a head of another state folder that got the recorded number after a reboot is not ours
        head.info_path.write_text(HeadInfo("http://127.0.0.1:1", "127.0.0.1:1", silent.pid, "t",
                                           str(tmp_path / "other")).to_json())
        assert head.ensure(timeout=2) == "new head"
        started.clear()
    finally:
        silent.kill()
        silent.wait()
    assert head.ensure(timeout=2) == "new head" and started      # its process is gone: a new head


@pytest.mark.stops_ingest_workers
def test_stopping_the_service_stops_its_ingest_workers(tmp_path, database_url):
    """A dataset read spawns ingest worker processes; the service's shutdown stops them (they used to
    outlive it, re-parented to PID 1)."""
    from service.datasets import IngestWorkers
    client = _client(_app(tmp_path / "svc", database_url))
    r = upload(client, client.keys["alice"], small_jsonl(tmp_path / "d.jsonl"), name="d")
    assert r.status_code == 201, r.text
    workers = list(IngestWorkers._pool._processes.values())
    assert workers and all(p.is_alive() for p in workers)
    client.__exit__(None, None, None)
    assert IngestWorkers._pool is None and not any(p.is_alive() for p in workers)


def test_a_failed_cancel_does_not_show_the_clusters_error(api, dataset_of, monkeypatch):
    """The cluster's error names its addresses: the client gets a 503 to retry, the server log the error."""
    sid = api.post("/searches", json=_search_body(dataset_of()), headers=api.keys["alice"]).json()["id"]
    backend = api.app.state.searches.backend

    def refuse(job_id):
        raise ConnectionError("GCS at 10.1.2.3:6379 refused the connection")
    monkeypatch.setattr(backend, "stop", refuse)
    r = api.post(f"/searches/{sid}/cancel", headers=api.keys["alice"])
    assert r.status_code == 503 and "10.1.2.3" not in r.text and r.headers["Retry-After"]
    assert api.get(f"/searches/{sid}", headers=api.keys["alice"]).json()["state"] == "queued"


def test_bounded_tail_keeps_the_last_bytes_of_any_stream():
    from service.ray_backend import bounded_tail
    chunks = (bytes([65 + i % 26]) * 1000 for i in range(1000))   # 1 MB in 1 KB chunks
    tail = bounded_tail(chunks, 2500)
    assert tail == "J" * 500 + "K" * 1000 + "L" * 1000   # chunks 997-999: 997 % 26 = 9
    assert bounded_tail(iter([]), 10) == "" and bounded_tail(iter([b"ab\xc3", b"\xa9"]), 10) == "ab\u00e9"


def test_a_log_is_read_from_its_server_as_a_bounded_stream():
    """5 MB of log on the wire, never 5 MB in memory: what is kept is the tail, read chunk by chunk."""
    import http.server
    import threading
    import tracemalloc

    from service.ray_backend import LOG_TAIL_BYTES, read_log_tail

    class FiveMegabytes(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            for i in range(5000):
                self.wfile.write(f"{i:04d} ".encode() + b"x" * 994 + b"\n")
            self.wfile.write(b"ValueError: the end\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FiveMegabytes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracemalloc.start()
        tail = read_log_tail(f"http://127.0.0.1:{server.server_port}/api/v0/logs/file", {"lines": 200}, timeout=30)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        server.shutdown()
    assert tail.endswith("ValueError: the end\n") and len(tail.encode()) == LOG_TAIL_BYTES
    assert peak < 1_000_000, f"{peak} bytes held while reading"
