"""Device choice: CUDA when present, else CPU with threads (torch and BLAS) set from the cores other processes
leave free."""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus: set[int]) -> dict[int, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    times = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                times[int(name[3:])] = [int(f) for f in fields[:8]]
    return times


def free_cpus_between(before: dict[int, Sequence[int]], after: dict[int, Sequence[int]]) -> float:
    """How many CPUs were free between two /proc/stat readings: idle and iowait time count as free.
    *Niced* time counts as busy: a thread team that shares a core with a nice-19 process still waits
    for it (measured on 2 cores beside two nice-19 trainings: a MiniLM forward pass 1.0 s with 2 threads,
    0.34 s with 1; a 64-component PCA 1.9 s with 2 BLAS threads, 0.03 s with 1)."""
    free = 0.0
    for cpu, now in after.items():
        delta = [a - b for a, b in zip(now, before.get(cpu, now))]
        total = sum(delta)
        if total > 0:
            free += (delta[3] + delta[4]) / total
        else:
            free += 1.0
    return free


def free_cpus(sample_seconds: float = 0.3) -> float | None:
    """CPUs of our affinity set that other processes leave free right now (None where /proc/stat is absent)."""
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        before = _cpu_times(cpus)
        time.sleep(sample_seconds)
        return free_cpus_between(before, _cpu_times(cpus))
    except OSError:
        return None


#: environment variables by which a user or launcher sets the BLAS libraries' threads themselves
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def use_cpu_threads() -> int:
    """Set torch's and the BLAS libraries' (numpy, scikit-learn) thread counts to :func:`cpu_threads`;
    BLAS is left alone when one of :data:`BLAS_THREAD_VARIABLES` is set."""
    from threadpoolctl import threadpool_limits

    threads = cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not any(os.environ.get(v) for v in BLAS_THREAD_VARIABLES):
        threadpool_limits(threads)  # not as a context manager: the limit stays for the process
    return threads


def cpu_threads() -> int:
    """Threads on the CPU: ``OMP_NUM_THREADS`` when a launcher (Ray) or the user set it, else the
    cores other processes leave free. A thread sharing a core with a busy process makes every parallel
    op wait for it: on 2 cores with one busy, a MiniLM training step took 2.3 s with 2 threads, 1.0 s with 1."""
    given = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if given:
        return given
    cpus = available_cpus()
    free = free_cpus()
    threads = cpus if free is None else max(1, min(cpus, int(free + 0.2)))
    if threads < cpus:
        log.info("%d of %d CPU cores are busy with other processes: training with %d thread(s)",
                 cpus - threads, cpus, threads)
    return threads


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when asked or present (auto; in a Ray trial, the GPU Ray granted it), else CPU.
    The choice is :func:`autodistill.resources.driver_device`."""
    from .resources import ResourceError, driver_device
    try:
        kind = driver_device(preference, torch.cuda.is_available())
    except ResourceError as err:
        raise RuntimeError(str(err)) from None
    if kind == "cuda":
        return torch.device("cuda")
    use_cpu_threads()
    return torch.device("cpu")
