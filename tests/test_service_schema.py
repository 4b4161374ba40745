"""Property-based tests generated from the service's OpenAPI schema (schemathesis): bounded in count
and time, with a valid API key; no generated request may produce a 5xx."""
from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from service import ServiceSettings, create_app
from service_support import CR_TRAIN

AUTH: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    state = tmp_path_factory.mktemp("svc-schema")
    # no Ray cluster here: generated searches name datasets that do not exist and never reach one
    app = create_app(ServiceSettings(state_dir=state, meta_features_backbone=None, max_upload_mb=1.0,
                                     ray_address="http://127.0.0.1:9"))
    with TestClient(app) as client:    # runs the lifespan: migrations
        AUTH["Authorization"] = f"Bearer {app.state.store.create_key('fuzz')[0]}"
        with open(CR_TRAIN, "rb") as fh:   # one real dataset, so its id-less routes see data too
            assert client.post("/datasets", files={"file": ("cr.jsonl", fh)}, headers=AUTH).status_code == 201
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_generated_request_is_a_server_error(api_schema):
    # schemathesis' own pytest plugin does not run under pytest 9 here: drive hypothesis directly
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    statuses: list[int] = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case):
            statuses.append(case.call_and_validate(headers=AUTH, checks=[not_a_server_error]).status_code)

        no_server_error()
    assert len(statuses) >= 3 * len(operations) and all(s < 500 for s in statuses)
    assert {200, 404, 422} <= set(statuses)   # the generated requests reach past validation too


def test_public_text_hides_server_paths_and_storage_uris():
    from service.errors import public_text
    assert public_text("cannot read file:///mnt/nfs/x/y.jsonl: gone") == "cannot read <server path>: gone"
    assert public_text("no such key s3://corp-bucket/a/b") == "no such key <server path>"
    assert public_text("at /srv/data/x.csv, line 3") == "at <server path>, line 3"
    assert public_text("at /srv/data/x.csv", [("/srv/data/x.csv", "train.csv")]) == "at train.csv"
    assert public_text("the hub dataset user/name, ratio 0.5: fine") == "the hub dataset user/name, ratio 0.5: fine"
    assert public_text("GET http://10.0.0.5:8265/api/jobs failed.") == "GET <server path> failed."
    assert public_text("no answer from https://huggingface.co/api/x") == "no answer from https://huggingface.co/api/x"
