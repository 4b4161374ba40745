"""Torch's CPU threads follow the cores other processes leave free (a busy core makes every op wait)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autodistill import device


def test_free_cpus_count_idle_and_iowait_as_free_and_niced_time_as_busy():
    before = {0: [100, 0, 0, 100, 0, 0, 0, 0], 1: [0, 0, 0, 0, 0, 0, 0, 0], 2: [0, 0, 0, 0, 0, 0, 0, 0]}
    after = {0: [200, 0, 0, 100, 0, 0, 0, 0],      # cpu0 fully busy
             1: [0, 0, 0, 90, 10, 0, 0, 0],        # cpu1 idle / iowait: free
             2: [0, 100, 0, 0, 0, 0, 0, 0]}        # cpu2 busy with a niced process: its thread would wait too
    assert device.free_cpus_between(before, after) == pytest.approx(1.0)


def test_a_cpu_that_did_not_tick_counts_as_free():
    same = {0: [5, 0, 0, 5, 0, 0, 0, 0]}
    assert device.free_cpus_between(same, same) == 1.0


def test_threads_respect_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.cpu_threads() == 3


def test_threads_leave_a_busy_core_alone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "free_cpus", lambda: 1.05)
    monkeypatch.setattr(device, "available_cpus", lambda: 2)
    assert device.cpu_threads() == 1
    monkeypatch.setattr(device, "free_cpus", lambda: 1.9)
    assert device.cpu_threads() == 2
    monkeypatch.setattr(device, "free_cpus", lambda: 0.1)
    assert device.cpu_threads() == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs and Linux affinity")
@pytest.mark.parametrize("prefix", [[], ["nice", "-n", "19"]], ids=["normal", "niced"])
def test_a_real_busy_process_is_seen_niced_or_not(prefix):
    cpu = sorted(os.sched_getaffinity(0))[0]
    hog = subprocess.Popen([*prefix, "taskset", "-c", str(cpu), sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.5)
        assert device.free_cpus(sample_seconds=0.5) <= len(os.sched_getaffinity(0)) - 0.5
    finally:
        hog.kill()
        hog.wait()


def test_use_cpu_threads_sets_torch_and_blas(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    import torch

    for var in device.BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(device, "free_cpus", lambda: 1.0)     # one core free
    monkeypatch.setattr(device, "available_cpus", lambda: 2)
    before, pools = torch.get_num_threads(), threadpool_info()
    try:
        assert device.use_cpu_threads() == 1
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        threadpool_limits(2)
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")        # the user's setting for BLAS stands
        blas = lambda: [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]  # noqa: E731
        assert device.use_cpu_threads() == 1 and blas() and set(blas()) == {2}
    finally:
        torch.set_num_threads(before)
        threadpool_limits({pool["prefix"]: pool["num_threads"] for pool in pools})
