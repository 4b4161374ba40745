"""Helpers shared by the service tests."""
from __future__ import annotations

import json
import time
from pathlib import Path

from autodistill.data import bundled_dataset_path
from service.ray_backend import JobBackend

CR_TRAIN = bundled_dataset_path() / "train.jsonl"
TERMINAL = ("succeeded", "failed", "cancelled")


def tiny_search_body(dataset_id: str, backbone: str, trials: int = 2, student_epochs: float = 4, **extra) -> dict:
    """A search over cpu-fast with a tiny teacher, 300 rows, length 32, students capped at ``student_epochs``
    (the space's rule would train them to its 20-epoch cap): well under a minute on 2 cores."""
    return {"dataset_id": dataset_id, "space": "cpu-fast", "trials": trials, "max_concurrent_trials": 2,
            "config": {"teachers": [{"backbone": backbone, "epochs": 3, "learning_rate": 3e-3}],
                       "data": {"max_train_examples": 300, "max_length": 32},
                       "optim": {"eval_batch_size": 256, "epochs": student_epochs}}, **extra}


def small_jsonl(path: Path, n: int = 40, seed: int = 0) -> Path:
    """A small, valid two-class JSONL file."""
    words = ["good", "great", "fine", "bad", "awful", "poor", "nice", "terrible"]
    rows = [{"text": f"{words[(i + seed) % 8]} product number {i} {words[(3 * i) % 8]}", "label": i % 2}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def wait_for(get_state, timeout: float = 420.0, every: float = 2.0) -> dict:
    """Poll ``get_state()`` (a search body) until it is terminal."""
    deadline = time.time() + timeout
    body = get_state()
    while body["state"] not in TERMINAL:
        assert time.time() < deadline, f"search still {body['state']} after {timeout:.0f} s: {body}"
        time.sleep(every)
        body = get_state()
    return body


class ScriptedBackend(JobBackend):
    """Answers status from a dict (None = the cluster does not know the job) and records submissions."""

    def __init__(self):
        self.states: dict[str, str | None] = {}
        self.submitted: list[tuple[str, list[str]]] = []
        self.files: dict[str, object] = {}
        self.log_text = "Traceback: boom"

    def submit(self, job_id, entrypoint, env, files=None):
        self.submitted.append((job_id, entrypoint))
        self.files[job_id] = files
        self.states[job_id] = "queued"

    def status(self, job_id):
        return self.states.get(job_id)

    def stop(self, job_id):
        self.states[job_id] = "cancelled"

    def log_tail(self, job_id, lines=200):
        return "\n".join(self.log_text.splitlines()[-lines:])
