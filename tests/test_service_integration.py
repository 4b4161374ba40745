"""The service as users run it: `autodistill serve` (real uvicorn on 127.0.0.1) with its embedded local Ray
head, driven over HTTP. Each test stops only the processes it started (the service, then its Ray head)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from service.ray_backend import LocalRayHead, free_ports
from service_support import CR_TRAIN, TERMINAL, tiny_search_body, wait_for

AUTODISTILL = str(Path(sys.executable).with_name("autodistill"))


class Service:
    """One `autodistill serve` process on a free loopback port, over a given state folder."""

    def __init__(self, state_dir: Path, backbone_root: Path):
        self.state_dir = state_dir
        self.env = {**os.environ, "AUTODISTILL_SERVICE_META_FEATURES_BACKBONE": "",
                    "AUTODISTILL_SERVICE_POLL_SECONDS": "1", "AUTODISTILL_SERVICE_RAY_NUM_CPUS": "3",
                    "AUTODISTILL_SERVICE_BACKBONE_ROOTS": str(backbone_root), "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def create_key(self) -> dict:
        out = subprocess.run([AUTODISTILL, "keys", "--state-dir", str(self.state_dir), "create", "it"],
                             env=self.env, capture_output=True, text=True, check=True)
        return {"Authorization": f"Bearer {out.stdout.strip()}"}

    def start(self, timeout: float = 60) -> None:
        port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.state_dir / f"serve-{port}.log", "wb")
        self.proc = subprocess.Popen([AUTODISTILL, "serve", "--port", str(port), "--state-dir", str(self.state_dir)],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.state_dir / f"serve-{port}.log").read_text()
            assert time.time() < deadline, "the service did not come up"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop_ray(self) -> None:
        LocalRayHead(self.state_dir).stop()   # the head this service started, by its recorded PID


def _outside_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses."""
    import socket
    found = set()
    try:
        found |= {i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # the default route's interface
        try:
            s.connect(("192.0.2.123", 9))
            found.add(s.getsockname()[0])
        except OSError:
            pass
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def assert_loopback_only(port: int) -> None:
    import socket
    for addr in _outside_addresses():
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, port)) != 0, f"port {port} answers on {addr}"


@pytest.fixture
def service(tmp_path, tiny_backbone):
    svc = Service(tmp_path, Path(tiny_backbone).parent)
    yield svc
    svc.stop()
    svc.stop_ray()


def test_upload_recommend_search_survive_a_restart_and_download_over_http(service, tiny_backbone):
    """One user's whole path: upload, recommend, search; the service restarts mid-search and finds the search
    again (in its database and on Ray); then the best student downloads and loads. One scenario, so the suite
    starts one service, one Ray head and one search instead of two of each."""
    key = service.create_key()
    service.start()
    with httpx.Client(base_url=service.url, headers=key, timeout=120) as http:
        with open(CR_TRAIN, "rb") as fh:
            r = http.post("/datasets", files={"file": ("cr.jsonl", fh)}, data={"name": "cr"})
        assert r.status_code == 201, r.text
        dataset = r.json()
        rec = http.post("/recommendations", json={"dataset_id": dataset["id"], "top_k": 3})
        assert rec.status_code == 200 and len(rec.json()["recommendations"]) == 3
        r = http.post("/searches", json=tiny_search_body(dataset["id"], tiny_backbone, trials=3, warm_start=True))
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        # the service started its own Ray head, on loopback, and recorded it
        head = json.loads((service.state_dir / "ray" / "head.json").read_text())
        assert head["dashboard_url"].startswith("http://127.0.0.1:")
        assert_loopback_only(int(head["dashboard_url"].rsplit(":", 1)[1]))   # job server + dashboard
        deadline = time.time() + 300
        while (state := http.get(location).json()["state"]) != "running":
            assert state not in TERMINAL and time.time() < deadline, state
            time.sleep(1)
    service.stop()                       # mid-search: the Ray job keeps running without the service
    time.sleep(3)
    service.start()
    with httpx.Client(base_url=service.url, headers=key, timeout=120) as http:
        final = wait_for(lambda: http.get(location).json())
        assert final["state"] == "succeeded", final
        assert final["progress"]["finished"] + final["progress"]["stopped_early"] == 3
        assert http.get(f"{location}/trials").json()["total"] == 3
        best = http.get(f"{location}/best").json()
        archive = http.get(best["download"])
        assert archive.status_code == 200
    extract = service.state_dir / "download"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(extract, filter="data")
    student_dir = next(extract.glob("*/student"))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    import torch
    with torch.no_grad():
        logits = model(**tokenizer(["a fine product", "it broke"], return_tensors="pt", padding=True)).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert best["config"]["student"]["num_layers"] == model.config.num_hidden_layers
