"""The resource logic for GPUs, fed with the cluster totals and device capabilities Ray and torch
report (there is no GPU on the test machines): per-trial requests, fractions, the driver's device,
the mixed-precision dtype, and a space's budget settings."""
from __future__ import annotations

import pytest

from autodistill.resources import (ResourceError, amp_dtype, concurrent_trials, driver_device,
                                   resolve_gpus_per_trial, trial_resources)

CPU_ONLY = {"CPU": 8.0, "memory": 3e10, "object_store_memory": 1e10, "node:127.0.0.1": 1.0}
FOUR_GPUS = {"CPU": 32.0, "GPU": 4.0, "memory": 1e11, "accelerator_type:A100": 4.0}


def test_auto_gpus_one_per_trial_with_gpus_none_without():
    assert resolve_gpus_per_trial(None, FOUR_GPUS) == 1.0
    assert resolve_gpus_per_trial(None, CPU_ONLY) == 0.0            # CPU-only clusters behave as before
    assert trial_resources(1, None, None, CPU_ONLY) == {"cpu": 1.0, "gpu": 0.0}
    assert trial_resources(4, None, None, FOUR_GPUS) == {"cpu": 4.0, "gpu": 1.0}


def test_fractional_gpus_share_a_device():
    req = trial_resources(2, 0.25, None, FOUR_GPUS)
    assert req == {"cpu": 2.0, "gpu": 0.25}
    assert concurrent_trials(req, FOUR_GPUS) == 16                  # 4 GPUs / 0.25, CPUs allow 16 too
    assert concurrent_trials(trial_resources(4, 0.25, None, FOUR_GPUS), FOUR_GPUS) == 8   # CPU-bound now
    assert concurrent_trials(trial_resources(1, 2, None, FOUR_GPUS), FOUR_GPUS) == 2      # whole GPUs
    assert concurrent_trials(trial_resources(1, None, None, CPU_ONLY), CPU_ONLY) == 8


def test_gpu_requests_the_cluster_cannot_grant_name_the_setting():
    with pytest.raises(ResourceError, match=r"gpus_per_trial=0.5, but the Ray cluster has 0 GPU"):
        trial_resources(1, 0.5, None, CPU_ONLY)
    with pytest.raises(ResourceError, match="whole GPUs"):
        resolve_gpus_per_trial(1.5, FOUR_GPUS)
    with pytest.raises(ResourceError, match="has 4 GPU"):
        resolve_gpus_per_trial(8, FOUR_GPUS)
    with pytest.raises(ResourceError, match="cpus_per_trial=64"):
        trial_resources(64, None, None, FOUR_GPUS)
    assert resolve_gpus_per_trial(0, FOUR_GPUS) == 0.0               # a CPU trial on a GPU cluster is allowed


def test_custom_resources_pin_trials_to_nodes_that_offer_them():
    cluster = {**CPU_ONLY, "worker_only": 1.0}
    assert trial_resources(1, None, {"worker_only": 1}, cluster) == {"cpu": 1.0, "gpu": 0.0, "worker_only": 1.0}
    assert concurrent_trials(trial_resources(1, None, {"worker_only": 1}, cluster), cluster) == 1
    with pytest.raises(ResourceError, match=r"resources.spot=1: no node.*--resources"):
        trial_resources(1, None, {"spot": 1}, cluster)
    with pytest.raises(ResourceError, match="gpus_per_trial"):
        trial_resources(1, None, {"GPU": 1}, FOUR_GPUS)


def test_the_driver_fine_tunes_the_teacher_on_a_gpu_when_it_sees_one():
    assert driver_device("auto", cuda_available=True) == "cuda"
    assert driver_device("auto", cuda_available=False) == "cpu"
    assert driver_device("cpu", cuda_available=True) == "cpu"
    with pytest.raises(ResourceError, match="entrypoint_num_gpus"):
        driver_device("cuda", cuda_available=False)


@pytest.mark.parametrize("capability, bf16, expected", [
    ((8, 0), True, "bfloat16"),     # A100
    ((9, 0), True, "bfloat16"),     # H100
    ((7, 5), False, "float16"),     # T4: tensor cores, no bfloat16
    ((7, 0), False, "float16"),     # V100
    ((6, 1), False, None),          # P40: no tensor cores, full precision
])
def test_auto_mixed_precision_follows_the_device_capability(capability, bf16, expected):
    assert amp_dtype("auto", "cuda", capability, bf16) == expected


def test_mixed_precision_off_cpu_and_forced_settings():
    assert amp_dtype("auto", "cpu") is None
    assert amp_dtype("off", "cuda", (8, 0), True) is None
    assert amp_dtype("fp16", "cuda", (8, 0), True) == "float16"
    with pytest.raises(ResourceError, match="no bfloat16"):
        amp_dtype("bf16", "cuda", (7, 5), False)
    with pytest.raises(ResourceError, match="needs a CUDA device"):
        amp_dtype("fp16", "cpu")


def test_trainer_on_cpu_runs_without_autocast_or_scaling():
    import torch

    from autodistill.trainer import mixed_precision
    autocast, scaler = mixed_precision("auto", torch.device("cpu"))
    assert not scaler.is_enabled()
    with autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_space_budgets_carry_gpu_settings(tiny_backbone):
    from autodistill.search.space import SearchSpace, SpaceError
    from test_search import tiny_space
    sp = SearchSpace.from_dict(tiny_space(tiny_backbone, gpus_per_trial=0.5, resources={"worker_only": 1}))
    assert sp.budget.gpus_per_trial == 0.5 and sp.budget.resources == {"worker_only": 1}
    assert SearchSpace.from_dict(tiny_space(tiny_backbone)).budget.gpus_per_trial is None   # auto
    assert sp.with_budget(gpus_per_trial=1).budget.gpus_per_trial == 1                      # per request
    with pytest.raises(SpaceError, match="whole GPUs"):
        SearchSpace.from_dict(tiny_space(tiny_backbone, gpus_per_trial=1.5))
    with pytest.raises(SpaceError, match="mixed_precision"):
        SearchSpace.from_dict({**tiny_space(tiny_backbone), "base": {"optim": {"mixed_precision": "fp8"}}})


def test_a_memory_request_is_rays_memory_resource_in_bytes_and_bounds_concurrency():
    from autodistill.resources import GIB
    req = trial_resources(1, None, None, CPU_ONLY, memory_gb=8)
    assert req == {"cpu": 1.0, "gpu": 0.0, "memory": 8.0 * GIB}
    assert concurrent_trials(req, CPU_ONLY) == 3                     # 3e10 bytes hold three 8 GiB trials, not 8
    with pytest.raises(ResourceError, match=r"memory_gb_per_trial=40, but the Ray cluster offers 27.9 GiB"):
        trial_resources(1, None, None, CPU_ONLY, memory_gb=40)
    with pytest.raises(ResourceError, match="must be > 0"):
        trial_resources(1, None, None, CPU_ONLY, memory_gb=0)


def test_the_memory_limit_fails_a_run_past_its_peak_and_names_the_setting():
    from autodistill.callbacks import MemoryLimitCallback, TrainerState
    from autodistill.resources import GIB, MemoryLimitExceeded, peak_rss_bytes
    peak = peak_rss_bytes()
    assert 10 * 2 ** 20 < peak < 64 * GIB                           # this test process: tens of MB to some GB
    under = MemoryLimitCallback(2 * peak / GIB)
    for hook in (under.on_step_end, under.on_evaluate, under.on_train_end):   # under: nothing happens
        hook(TrainerState(global_step=3), metrics={})
    over = MemoryLimitCallback(0.001)
    for hook in (over.on_step_end, over.on_evaluate, over.on_train_end):
        with pytest.raises(MemoryLimitExceeded, match=r"at step 3, this process held \d+\.\d\d GiB, over "
                                                      r"memory_gb_per_trial=0.001 GiB: raise memory_gb_per_trial"):
            hook(TrainerState(global_step=3), metrics={})


def test_the_peak_is_this_processs_own_and_starts_again_on_reset():
    """A reused Ray actor runs trial after trial: each is judged on its own peak, not on an earlier one's."""
    from autodistill.resources import peak_rss_bytes, reset_peak_rss
    if not reset_peak_rss():   # from what this process holds now, whatever it held before this test
        pytest.skip("this kernel offers no reset of the high-water mark (/proc/self/clear_refs)")
    before = peak_rss_bytes()
    block = bytearray(400 * 2 ** 20)
    block[::4096] = b"x" * len(block[::4096])                     # touch every page: resident
    held = peak_rss_bytes()
    assert held >= before + 390 * 2 ** 20
    del block
    assert peak_rss_bytes() > held - 16 * 2 ** 20                    # freed, but the high-water mark stays
    assert reset_peak_rss() and peak_rss_bytes() < held - 390 * 2 ** 20


def test_a_budgets_memory_limit_must_be_positive():
    from autodistill.search.space import Budget, SpaceError
    assert Budget.from_dict({"memory_gb_per_trial": 2.5}).memory_gb_per_trial == 2.5
    with pytest.raises(SpaceError, match="memory_gb_per_trial=0"):
        Budget.from_dict({"memory_gb_per_trial": 0})
