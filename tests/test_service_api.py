"""The REST service through FastAPI's TestClient: every endpoint and error class, pagination,
idempotency, cross-key isolation. Searches run as real Ray jobs on a local Ray head this module starts."""
from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autodistill.config import PipelineConfig
from autodistill.meta import DATASETS_DIR
from autodistill.meta.fitting import DEFAULT_MODEL_DIR
from autodistill.meta.warm_start import read_decision
from service import ServiceSettings, create_app
from service.ray_backend import LocalRayHead
from service_support import CR_TRAIN, small_jsonl, tiny_search_body, wait_for


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    head = LocalRayHead(tmp_path_factory.mktemp("ray-head"), num_cpus=3)   # 1 for a search's driver, 2 for trials
    info = head.start()
    yield info
    head.stop()


def _app(state_dir: Path, **settings):
    values = {"state_dir": state_dir, "meta_features_backbone": None, "poll_seconds": 0.5,
              "allowed_roots": [DATASETS_DIR], **settings}
    return create_app(ServiceSettings(**values))


@pytest.fixture(scope="module")
def api(tmp_path_factory, ray_head, tiny_backbone):
    app = _app(tmp_path_factory.mktemp("svc"), ray_address=ray_head.dashboard_url, ray_auth_token=ray_head.token,
               max_upload_mb=2.0, backbone_roots=[Path(tiny_backbone).parent])
    with TestClient(app) as client:
        store = app.state.store
        client.keys = {name: {"Authorization": f"Bearer {store.create_key(name, scope)[0]}"}
                       for name, scope in (("alice", "user"), ("bob", "user"), ("root", "admin"))}
        yield client


def upload(client, headers, path: Path = CR_TRAIN, **data):
    with open(path, "rb") as fh:
        return client.post("/datasets", files={"file": (path.name, fh)}, data=data, headers=headers)


@pytest.fixture(scope="module")
def cr(api):
    r = upload(api, api.keys["alice"], name="cr")
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def finished_search(api, cr, tiny_backbone):
    r = api.post("/searches", json=tiny_search_body(cr["id"], tiny_backbone, warm_start=True),
                 headers=api.keys["alice"])
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/searches/{r.json()['id']}"
    # a dataset a search in flight uses cannot be deleted
    assert api.delete(f"/datasets/{cr['id']}", headers=api.keys["alice"]).status_code == 409
    body = wait_for(lambda: api.get(r.headers["location"], headers=api.keys["alice"]).json())
    assert body["state"] == "succeeded", body
    return body


# --------------------------------------------------------------------------- health, docs, auth
def test_health_and_docs_need_no_key(api):
    assert api.get("/healthz").json() == {"status": "ok", "database": "ok", "schema_version": 1, "version": "0.1.0"}
    schema = api.get("/openapi.json").json()
    assert {"/datasets", "/recommendations", "/searches", "/searches/{search_id}/best", "/meta-model/refit"} \
        <= set(schema["paths"])
    assert set(schema["paths"]["/datasets"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                                 "application/json"}
    assert api.get("/docs").status_code == 200


ENDPOINTS = [("get", "/datasets"), ("post", "/datasets"), ("get", "/datasets/x"), ("delete", "/datasets/x"),
             ("post", "/recommendations"), ("post", "/searches"), ("get", "/searches"), ("get", "/searches/x"),
             ("get", "/searches/x/trials"), ("post", "/searches/x/cancel"), ("delete", "/searches/x"),
             ("get", "/searches/x/best"), ("get", "/searches/x/best/student"), ("post", "/meta-model/refit")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_needs_a_valid_key(api, method, path):
    for headers in ({}, {"Authorization": "Bearer adk_wrong"}, {"X-API-Key": "nope"}):
        r = getattr(api, method)(path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_x_api_key_header_works_and_revoked_keys_do_not(api):
    secret, row = api.app.state.store.create_key("carol")
    assert api.get("/datasets", headers={"X-API-Key": secret}).status_code == 200
    api.app.state.store.revoke_key(row["id"])
    assert api.get("/datasets", headers={"X-API-Key": secret}).status_code == 401


# --------------------------------------------------------------------------- datasets
def test_upload_is_validated_and_described(api, cr):
    assert cr["stats"]["task_type"] == "classification" and cr["stats"]["num_labels"] == 2
    assert cr["stats"]["train_rows"] + cr["stats"]["validation_rows"] == 3017
    assert cr["meta_features"]["num_labels"] == 2 and cr["meta_features"]["has_backbone"] == 0
    assert all(v is None or math.isfinite(v) for v in cr["meta_features"].values() if isinstance(v, float))
    got = api.get(f"/datasets/{cr['id']}", headers=api.keys["alice"])
    assert got.status_code == 200 and got.json() == cr


def test_upload_with_validation_file_and_columns(api, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence,target\n" + "\n".join(f"item {i} is {'good' if i % 2 else 'bad'},{i % 2}"
                                                     for i in range(30)) + "\n", encoding="utf-8")
    val = tmp_path / "val.csv"
    val.write_text("sentence,target\nnice,1\nawful,0\nfine,1\nitem 3 is good,1\n", encoding="utf-8")
    with open(train, "rb") as t, open(val, "rb") as v:
        r = api.post("/datasets", files={"file": ("train.csv", t), "validation_file": ("val.csv", v)},
                     data={"columns": json.dumps({"text_column": "sentence", "label_column": "target"})},
                     headers=api.keys["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["stats"]["validation_rows"] == 4 and r.json()["stats"]["validation_source"] == "file"
    assert r.json()["stats"]["validation_in_train"] == 1        # "item 3 is good" is a train row too: said


def test_reference_by_path_under_the_allowed_root(api, tmp_path):
    r = api.post("/datasets", json={"path": "rte", "name": "rte"}, headers=api.keys["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["stats"]["is_pair"] and r.json()["source_kind"] == "path"
    for bad in ("../../etc", "/etc/passwd", str(DATASETS_DIR / ".." / "..")):
        r = api.post("/datasets", json={"path": bad}, headers=api.keys["alice"])
        assert r.status_code == 403 and r.json()["field"] == "path", (bad, r.text)
    link = DATASETS_DIR / "rte" / "escape-link"   # a symlink inside the root pointing out of it
    assert not link.exists()
    os.symlink(tmp_path, link)
    try:
        assert api.post("/datasets", json={"path": "rte/escape-link"}, headers=api.keys["alice"]).status_code == 403
    finally:
        link.unlink()
    r = api.post("/datasets", json={"path": "no-such-dataset"}, headers=api.keys["alice"])
    assert r.status_code == 422 and r.json()["field"] == "path"


@pytest.mark.parametrize("body,field", [
    ({}, "body"), ({"path": "rte", "hf_name": "glue"}, "body"), ({"path": "rte", "bogus": 1}, "bogus"),
    ({"path": "rte", "columns": {"text_colum": "x"}}, "columns.text_colum"),
    ({"hf_name": "../../x"}, "hf_name")])
def test_bad_references_name_the_field(api, body, field):
    r = api.post("/datasets", json=body, headers=api.keys["alice"])
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["error"] == "validation_error"


def test_bad_uploads_are_422_naming_the_field(api, tmp_path):
    no_label = tmp_path / "x.jsonl"
    no_label.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    r = upload(api, api.keys["alice"], no_label)
    assert r.status_code == 422 and r.json()["field"] == "file" and "label" in r.json()["detail"]
    wrong_ext = tmp_path / "x.exe"
    wrong_ext.write_bytes(b"MZ\x00\x01")
    r = upload(api, api.keys["alice"], wrong_ext)
    assert r.status_code == 422 and r.json()["field"] == "file"
    binary = tmp_path / "y.jsonl"
    binary.write_bytes(bytes(range(256)) * 10)
    assert upload(api, api.keys["alice"], binary).status_code == 422
    r = upload(api, api.keys["alice"], small_jsonl(tmp_path / "ok.jsonl"), columns='{"label_colum": "y"}')
    assert r.status_code == 422 and r.json()["field"] == "columns.label_colum"
    r = api.post("/datasets", data={"name": "x"}, files={"other": ("a.jsonl", b"{}")}, headers=api.keys["alice"])
    assert r.status_code == 422 and r.json()["field"] == "file"
    r = api.post("/datasets", content=b"text", headers={**api.keys["alice"], "content-type": "text/plain"})
    assert r.status_code == 415
    r = api.post("/datasets", content=b"{not json", headers={**api.keys["alice"], "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    # nothing half-made is kept: only the datasets that were created have folders
    folders = {p.name for p in (api.app.state.settings.state_dir / "datasets").iterdir()}
    listed = {d["id"] for d in api.get("/datasets?limit=100", headers=api.keys["alice"]).json()["items"]}
    assert folders <= listed


def test_uploads_over_the_cap_are_413(tmp_path):
    app = _app(tmp_path / "svc", max_upload_mb=0.01)
    big = small_jsonl(tmp_path / "big.jsonl", n=2000)
    assert big.stat().st_size > 0.01 * 2**20
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {app.state.store.create_key('a')[0]}"}
        r = upload(client, headers, big)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        # also without a Content-Length header (a chunked upload): the body is cut at the cap
        body = io.BytesIO(b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n"
                          + big.read_bytes() + b"\r\n--b--\r\n")
        r = client.post("/datasets", content=iter(lambda: body.read(4096), b""),
                        headers={**headers, "content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert not any((tmp_path / "svc" / "datasets").glob("*/*")) if (tmp_path / "svc" / "datasets").exists() else True


def test_pagination(api, tmp_path):
    headers = api.keys["bob"]
    ids = [upload(api, headers, small_jsonl(tmp_path / f"d{k}.jsonl", seed=k), name=f"d{k}").json()["id"]
           for k in range(3)]
    first = api.get("/datasets?limit=2", headers=headers).json()
    assert first["total"] == 3 and len(first["items"]) == 2 and first["next"].endswith("limit=2&offset=2")
    second = api.get(first["next"], headers=headers).json()
    assert second["next"] is None and len(second["items"]) == 1
    assert {d["id"] for d in first["items"] + second["items"]} == set(ids)
    far = api.get("/datasets?offset=2147483647", headers=headers).json()
    assert far["items"] == [] and far["total"] == 3 and far["next"] is None
    for bad in ("limit=0", "limit=101", "offset=-1", "limit=x", "offset=9223372036854775808"):
        r = api.get(f"/datasets?{bad}", headers=headers)
        assert r.status_code == 422 and r.json()["field"] in ("limit", "offset"), bad
    for i in ids:
        assert api.delete(f"/datasets/{i}", headers=headers).status_code == 204
    assert api.get(f"/datasets/{ids[0]}", headers=headers).status_code == 404
    assert api.delete(f"/datasets/{ids[0]}", headers=headers).status_code == 404


def test_keys_see_only_their_own_resources(api, cr, finished_search):
    bob = api.keys["bob"]
    assert cr["id"] not in {d["id"] for d in api.get("/datasets?limit=100", headers=bob).json()["items"]}
    for method, path in (("get", f"/datasets/{cr['id']}"), ("delete", f"/datasets/{cr['id']}"),
                         ("get", f"/searches/{finished_search['id']}"),
                         ("get", f"/searches/{finished_search['id']}/trials"),
                         ("get", f"/searches/{finished_search['id']}/best"),
                         ("get", f"/searches/{finished_search['id']}/best/student"),
                         ("post", f"/searches/{finished_search['id']}/cancel")):
        r = getattr(api, method)(path, headers=bob)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path)
    assert api.post("/recommendations", json={"dataset_id": cr["id"]}, headers=bob).status_code == 404
    assert api.post("/searches", json={"dataset_id": cr["id"]}, headers=bob).status_code == 404
    assert finished_search["id"] not in {s["id"] for s in api.get("/searches", headers=bob).json()["items"]}
    assert api.get(f"/datasets/{cr['id']}", headers=api.keys["alice"]).status_code == 200


def test_idempotency_key_makes_retries_safe(api, tmp_path):
    headers = {**api.keys["bob"], "Idempotency-Key": "upload-1"}
    path = small_jsonl(tmp_path / "i.jsonl")
    first, again = upload(api, headers, path, name="i"), upload(api, headers, path, name="i")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert sum(d["name"] == "i" for d in api.get("/datasets?limit=100", headers=api.keys["bob"]).json()["items"]) == 1
    other = upload(api, headers, small_jsonl(tmp_path / "j.jsonl", seed=3), name="i")
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"
    # the same key under another API key is another request
    assert upload(api, {**api.keys["alice"], "Idempotency-Key": "upload-1"}, path, name="i").json()["id"] \
        != first.json()["id"]
    # a client error is replayed too, not re-run
    bad = {"dataset_id": "nope"}
    h = {**api.keys["bob"], "Idempotency-Key": "rec-1"}
    assert api.post("/searches", json=bad, headers=h).status_code == 404
    assert api.post("/searches", json=bad, headers=h).headers["idempotent-replayed"] == "true"


# --------------------------------------------------------------------------- recommendations
def test_recommendations_are_ranked_configs_with_reasons(api, cr):
    r = api.post("/recommendations", json={"dataset_id": cr["id"], "top_k": 3}, headers=api.keys["alice"])
    assert r.status_code == 200, r.text
    body = r.json()
    recs = body["recommendations"]
    assert [x["rank"] for x in recs] == [1, 2, 3] and body["target"] == "ratio"
    # the order the committed evaluation chose (model/warm_start.json), the one searches warm-start from
    decision = read_decision(DEFAULT_MODEL_DIR)
    assert body["source"] == decision["source"] and body["reason"]
    if decision["source"] == "portfolio":
        assert [x["candidate"] for x in recs] == decision["portfolio"][:3]
        assert all(x["why"]["portfolio_member"] for x in recs)
    else:
        scores = [x["predicted_score"] for x in recs]
        assert scores == sorted(scores, reverse=True)
    served = api.app.state.recommender.model().model
    assert served.method == "hgb" and served.n_bags == 1      # the committed plain model: one unbagged model
    for x in recs:
        PipelineConfig.model_validate(x["config"])
        assert x["student_parameters"] > 0
        assert x["uncertainty"] is None                       # it has no spread to report, and reports none
        assert x["why"]["nearest_datasets"] and x["why"]["top_features"]
    # what a search warm-starts from: the same order, without the (unfiltered) nearest datasets of the cache
    start = api.app.state.recommender.warm_start(api.app.state.store.get_dataset(None, cr["id"]), 3)
    assert [r.candidate for r in start.recommendations] == [x["candidate"] for x in recs]
    assert start.source == body["source"] and not any("nearest_datasets" in r.why for r in start.recommendations)


def test_recommendation_constraints(api, cr):
    small = {"dataset_id": cr["id"], "top_k": 50, "constraints": {"max_student_parameters": 15_700_000}}
    recs = api.post("/recommendations", json=small, headers=api.keys["alice"]).json()["recommendations"]
    assert recs and all(x["student_parameters"] <= 15_700_000 for x in recs)
    none = {"dataset_id": cr["id"], "constraints": {"max_student_parameters": 1}}
    assert api.post("/recommendations", json=none, headers=api.keys["alice"]).json()["recommendations"] == []
    by_cfg = {"dataset_id": cr["id"], "top_k": 50, "constraints": {"config": {"mixup.enabled": True}}}
    recs = api.post("/recommendations", json=by_cfg, headers=api.keys["alice"]).json()["recommendations"]
    assert recs and all(x["config"]["mixup"]["enabled"] for x in recs)
    every = api.post("/recommendations", json={"dataset_id": cr["id"], "top_k": 50}, headers=api.keys["alice"])
    assert len(recs) < len(every.json()["recommendations"])
    # constraints that leave no portfolio member: the answer is the meta-model's ranking, and says so
    pkd = {"dataset_id": cr["id"], "top_k": 50, "constraints": {"config": {"loss.intermediate.objective": "pkd"}}}
    body = api.post("/recommendations", json=pkd, headers=api.keys["alice"]).json()
    assert body["recommendations"] and all(x["config"]["loss"]["intermediate"]["objective"] == "pkd"
                                           for x in body["recommendations"])
    assert not any(x["why"].get("portfolio_member") for x in body["recommendations"])
    assert body["source"] == "meta_model"
    if read_decision(DEFAULT_MODEL_DIR)["source"] == "portfolio":
        assert "none of its members" in body["reason"]
    # a path that names no setting would match no candidate: an error naming it, not an empty answer
    typo = {"dataset_id": cr["id"], "constraints": {"config": {"student.num_layer": [2]}}}
    r = api.post("/recommendations", json=typo, headers=api.keys["alice"])
    assert r.status_code == 422 and "student has no setting 'num_layer'" in r.text, r.text


@pytest.mark.parametrize("body,status,field", [
    ({"dataset_id": "nope"}, 404, None), ({"dataset_id": "x", "top_k": 0}, 422, "top_k"),
    ({"dataset_id": "x", "extra": 1}, 422, "extra"), ({}, 422, "dataset_id"),
    ({"dataset_id": "x", "constraints": {"max_student_parameters": -1}}, 422, "constraints.max_student_parameters")])
def test_recommendation_errors(api, body, status, field):
    r = api.post("/recommendations", json=body, headers=api.keys["alice"])
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


# --------------------------------------------------------------------------- searches (real Ray jobs)
def test_finished_search_reports_trials_and_best(api, finished_search, tiny_backbone):
    alice = api.keys["alice"]
    sid = finished_search["id"]
    assert finished_search["progress"]["finished"] + finished_search["progress"]["stopped_early"] == 2
    assert finished_search["best_score"] is not None and finished_search["finished_at"]
    page = api.get(f"/searches/{sid}/trials?limit=1", headers=alice).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["next"]
    rest = api.get(page["next"], headers=alice).json()
    assert len(rest["items"]) == 1 and rest["items"][0]["trial_id"] != page["items"][0]["trial_id"]
    best = api.get(f"/searches/{sid}/best", headers=alice).json()
    assert best["score"] == pytest.approx(finished_search["best_score"])
    # named as under the backbone root, never by the real path the job ran with
    assert best["config"]["teachers"][0]["backbone"] == Path(tiny_backbone).name
    archive = api.get(best["download"], headers=alice)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        names = tar.getnames()
        config = tar.extractfile(f"{sid}-best/config.yaml").read().decode()
        trial = json.loads(tar.extractfile(f"{sid}-best/trial.json").read())
    # what the student was trained with, without a server path: the dataset by id, the teacher by its name
    assert f"dataset:{finished_search['dataset_id']}" in config and str(Path(tiny_backbone).parent) not in config
    assert "path" not in trial and trial["trial_id"] == best["trial_id"]
    assert any(n.endswith("student/config.json") for n in names)
    assert any(n.endswith("model.safetensors") for n in names)
    assert api.post(f"/searches/{sid}/cancel", headers=alice).status_code == 409   # already finished
    listed = api.get("/searches", headers=alice).json()
    assert sid in {s["id"] for s in listed["items"]}


def test_a_search_driver_is_counted_in_rays_cpus_not_its_memory(api, ray_head):
    """The job's driver (where the teacher is fine-tuned) holds search_entrypoint_cpus of Ray's CPUs. Its
    memory limit is enforced in the driver, not reserved: reserved, two searches' drivers (2 x 6 GiB of a
    node's 14.7) would leave neither's 4 GiB trials room to start."""
    import sys
    backend = api.app.state.searches.backend
    probe = ("import ray; ray.init(address='auto'); free = ray.available_resources(); "
             "print('FREE', free.get('CPU', 0.0), free.get('memory', 0.0), ray.cluster_resources()['memory'])")
    backend.submit("cpu-probe", [sys.executable, "-c", probe], {})
    deadline = time.time() + 120
    while backend.status("cpu-probe") not in ("succeeded", "failed"):
        assert time.time() < deadline
        time.sleep(1)
    total = 3.0   # the module's head
    cpus, memory, memory_total = re.search(r"FREE (\S+) (\S+) (\S+)", backend.log_tail("cpu-probe")).groups()
    assert float(cpus) == total - api.app.state.settings.search_entrypoint_cpus
    assert float(memory) == float(memory_total)


def test_a_failed_jobs_log_is_read_as_a_bounded_tail(api, ray_head):
    """Only the end of a long log crosses the wire: its last lines, at most LOG_TAIL_BYTES, error included."""
    import sys

    from service.ray_backend import LOG_TAIL_BYTES
    backend = api.app.state.searches.backend
    noisy = "for i in range(100_000): print(f'line {i:06d} ' + 'x' * 90)\nraise ValueError('the real cause')"
    backend.submit("log-tail", [sys.executable, "-c", noisy], {})   # ~10 MB of output, then the error
    deadline = time.time() + 120
    while backend.status("log-tail") not in ("succeeded", "failed"):
        assert time.time() < deadline
        time.sleep(1)
    tail = backend.log_tail("log-tail", lines=50)
    assert len(tail.encode()) <= LOG_TAIL_BYTES and len(tail.splitlines()) <= 50
    assert tail.rstrip().endswith("ValueError: the real cause") and "line 099999" in tail and "line 000000" not in tail


def test_cancel_a_running_search(api, cr, tiny_backbone):
    alice = api.keys["alice"]
    r = api.post("/searches", json=tiny_search_body(cr["id"], tiny_backbone, trials=6), headers=alice)
    assert r.status_code == 202
    sid = r.json()["id"]
    assert api.get(f"/searches/{sid}/best", headers=alice).status_code == 409   # not finished
    cancelled = api.post(f"/searches/{sid}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert api.post(f"/searches/{sid}/cancel", headers=alice).status_code == 409
    final = wait_for(lambda: api.get(f"/searches/{sid}", headers=alice).json(), timeout=60)
    assert final["state"] == "cancelled"
    deadline = time.time() + 90
    while api.app.state.searches.backend.status(sid) != "cancelled":   # Ray stops the job too
        assert time.time() < deadline, api.app.state.searches.backend.status(sid)
        time.sleep(1)


@pytest.mark.parametrize("change,field", [
    ({"space": "nope"}, "space"), ({"trials": 0}, "trials"), ({"trials": 10_000}, "trials"),
    ({"config": {"optim": {"learnig_rate": 1}}}, "config"), ({"config": {"data": {"train": "/etc"}}}, "config"),
    ({"warm_start": [{"optim.learnig_rate": 1e-4}]}, "warm_start"), ({"time_budget": -1}, "time_budget"),
    ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed")])
def test_bad_search_requests_are_422(api, cr, change, field):
    r = api.post("/searches", json={"dataset_id": cr["id"], **change}, headers=api.keys["alice"])
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    if "config" in change:
        assert next(iter(next(iter(change["config"].values())))) in r.json()["detail"]   # names the key


def test_unknown_search_is_404(api):
    for path in ("/searches/nope", "/searches/nope/trials", "/searches/nope/best"):
        assert api.get(path, headers=api.keys["alice"]).status_code == 404


# --------------------------------------------------------------------------- the meta-model
def test_refit_folds_finished_searches_and_needs_admin(api, cr, finished_search):
    r = api.post("/meta-model/refit", headers=api.keys["alice"])
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    before = api.post("/recommendations", json={"dataset_id": cr["id"]}, headers=api.keys["alice"]).json()["model"]
    r = api.post("/meta-model/refit", headers=api.keys["root"])
    assert r.status_code == 200, r.text
    assert r.json()["searches_folded"] >= 1 and r.json()["records_added"] >= 1
    after = api.post("/recommendations", json={"dataset_id": cr["id"]}, headers=api.keys["alice"]).json()["model"]
    # a new model, from the records the committed model was fitted on and the folded search, whose dataset
    # is left out (below): the same rows
    assert after["n_rows"] == before["n_rows"] == r.json()["rows"]
    # the tiny test teacher scores no better than the majority class: the one fitting rule (as `meta fit`)
    # leaves such a dataset out of the model, and the refit says so
    name = f"svc-{cr['id']}"
    assert name in r.json()["left_out_uninformative"]
    assert name not in api.app.state.recommender.model().datasets
    assert api.post("/meta-model/refit", headers=api.keys["root"]).json()["searches_folded"] == 0


# --------------------------------------------------------------------------- every database
def test_the_app_on_each_database(database_url, tmp_path):
    app = _app(tmp_path / "svc", database_url=database_url)
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {app.state.store.create_key('a')[0]}"}
        r = upload(client, {**h, "Idempotency-Key": "k"}, small_jsonl(tmp_path / "a.jsonl"))
        assert r.status_code == 201
        assert upload(client, {**h, "Idempotency-Key": "k"}, small_jsonl(tmp_path / "a.jsonl")).json() == r.json()
        assert client.get("/datasets", headers=h).json()["total"] == 1
        assert client.delete(r.headers["location"], headers=h).status_code == 204
        assert client.get("/healthz").json()["schema_version"] == 1


def test_recommendations_size_students_from_the_model_folders_the_server_knows(api, cr, monkeypatch):
    """A candidate's student size is read from its teacher's folder as the server names it; only the answer
    names it as the client does (renamed first, the size lookup went to the working directory or the hub)."""
    from service import recommend
    seen = []
    real_size = recommend.student_parameters_of

    def size(cfg, num_labels):
        seen.append(cfg.teacher.backbone)
        return real_size(cfg, num_labels)

    def rename(cfg, roots):
        cfg = cfg.model_copy(deep=True)
        cfg.teachers[0].backbone = "as-the-client-names-it"
        return cfg
    monkeypatch.setattr(recommend, "student_parameters_of", size)
    monkeypatch.setattr(recommend, "public_model_names", rename)
    recs = api.post("/recommendations", json={"dataset_id": cr["id"]}, headers=api.keys["alice"]).json()
    assert seen and "as-the-client-names-it" not in seen
    assert {r["config"]["teachers"][0]["backbone"] for r in recs["recommendations"]} == {"as-the-client-names-it"}
