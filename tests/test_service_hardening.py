"""Hostile and careless requests (issue 19): each is answered with its documented JSON 4xx, bounded in
memory and time, and reveals nothing of the server (paths, tracebacks) or of other keys. Searches run on
a scripted job backend here (the Ray path itself is covered by test_service_api / _integration);
every test that touches the database runs on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import io
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


def test_text_files_are_capped_by_rows(tmp_path, database_url):
    client = _client(_app(tmp_path / "svc", database_url, max_rows=100))
    try:
        _is_json_error(upload(client, client.keys["alice"], small_jsonl(tmp_path / "many.jsonl", n=150)), 413, "file")
        assert upload(client, client.keys["alice"], small_jsonl(tmp_path / "few.jsonl", n=90)).status_code == 201
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
    shallow = {"dataset_id": "nope", "constraints": {"config": {"a": [[[[1]]]]}}}   # ordinary nesting passes
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
