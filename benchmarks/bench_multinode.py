"""Search throughput on one Ray node with 1 CPU vs two Ray nodes with 1 CPU each, side by side.

The same search (same space, seed, number of trials; every trial has the same cost: fixed epochs,
no early stopping, ASHA never stops a trial) runs twice against a real local cluster:

  1 node x 1 CPU   a head with 1 CPU
  2 nodes x 1 CPU  a head with 1 CPU + a worker with 1 CPU in its own mount namespace (private /tmp,
                   HOME and cache; it shares nothing with the head but Ray)

Trials get the dataset, teacher and logits through the object store; Tune's storage is a file:// URI
outside /tmp. Trials/hour counts the students trained per hour of the search's student phase (the
teacher fine-tune, done once in the driver and cached for later runs, is not counted). With
``--rounds 2`` the setups run in ABBA order (1, 2, 2, 1 nodes) so that a drift in the shared machine's
load hits both alike; the load average is printed per run (other sessions' processes count in it, and
Ray runs trials at niceness 15).

``--ceiling`` first measures what the machine itself allows: the same student trained by ``autodistill
distill`` alone, then two at once (no Ray); 2 x alone / together bounds any two-node speed-up here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_multinode.py [--trials 6] [--rows 1200] [--rounds 2] [--ceiling]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from conftest import make_tiny_backbone  # noqa: E402
from ray_cluster_support import VENV_BIN, LocalCluster, unshare_available  # noqa: E402

from autodistill.data import bundled_dataset_path  # noqa: E402


def space(backbone: str, trials: int, rows: int, epochs: float) -> dict:
    return {
        "name": "bench-multinode",
        "base": {"data": {"max_train_examples": rows, "max_length": 64},
                 "teachers": [{"backbone": backbone, "epochs": 2, "learning_rate": 3e-3}],
                 "student": {"num_layers": 2},
                 "optim": {"epochs": epochs, "evals_per_epoch": 1, "early_stopping_patience": None,
                           "batch_size": 32, "eval_batch_size": 256}},
        # grace_period = max_t: ASHA lets every trial run to the end, so each costs the same
        "budget": {"trials": trials, "max_concurrent_trials": 2, "cpus_per_trial": 1, "grace_period": 50,
                   "max_t": 50, "reduction_factor": 2, "seed": 0},
        "params": [{"name": "optim.learning_rate", "float": [3e-4, 3e-3], "log": True},
                   {"name": "loss.prediction.temperature", "choices": [1.0, 2.0, 4.0]}],
    }


def ceiling(backbone: str, rows: int, epochs: float, work: Path, repeats: int = 2) -> dict:
    """The machine's own limit, without Ray: one student trained alone vs two trained at once.

    Two CPU-bound processes on two cores rarely run as fast as one alone (shared caches, memory
    bandwidth, a hypervisor's vCPUs); no scheduler can scale past this ratio.
    """
    base = space(backbone, 1, rows, epochs)["base"]
    cfg = work / "ceiling.yaml"
    cfg.write_text(yaml.safe_dump({**base, "optim": {**base["optim"], "learning_rate": 1e-3}}), encoding="utf-8")

    def distil(tag: str) -> subprocess.Popen:
        return subprocess.Popen([str(VENV_BIN / "autodistill"), "distill", "--data", str(bundled_dataset_path()),
                                 "--config", str(cfg), "--out", str(work / tag)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def seconds(tag: str, proc: subprocess.Popen) -> float:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"ceiling run {tag} failed:\n{err[-3000:]}")
        return json.loads((work / tag / "metrics.json").read_text())["train_seconds"]

    seconds("warm", distil("warm"))                      # fine-tunes and caches the teacher
    alone, together = [], []
    for i in range(repeats):
        alone.append(seconds(f"alone{i}", distil(f"alone{i}")))
        pair = [(f"pair{i}{j}", distil(f"pair{i}{j}")) for j in range(2)]
        together += [seconds(tag, proc) for tag, proc in pair]
    mean_alone, mean_together = sum(alone) / len(alone), sum(together) / len(together)
    return {"alone_s": alone, "together_s": together, "ratio": 2 * mean_alone / mean_together}


def run(label: str, workers: int, space_file: Path, trials: int, work: Path, storage: Path) -> dict:
    out = work / f"{label.replace(' ', '')}-{uuid.uuid4().hex[:6]}"
    load = os.getloadavg()[0]
    with LocalCluster(head_cpus=1) as cluster:
        cluster.start_head()
        for _ in range(workers):
            cluster.add_worker(num_cpus=1)
        cluster.wait_for_nodes(1 + workers)
        started = time.perf_counter()
        proc = subprocess.run(
            [str(VENV_BIN / "autodistill"), "search", "--data", str(bundled_dataset_path()), "--space",
             str(space_file), "--trials", str(trials), "--address", cluster.address, "--out", str(out),
             "--storage-path", f"file://{storage}/{out.name}"],
            env=cluster.env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{label}: search failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    board = json.loads((out / "leaderboard.json").read_text())
    done = sum(r["status"] == "completed" for r in board["trials"])
    student_s = board["budget"]["student_seconds"]
    secs = [r["seconds"] for r in board["trials"] if r.get("seconds")]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    distill = sum(r["metrics"].get("distill_seconds") or 0 for r in records)
    cpu = sum(r["metrics"].get("distill_cpu_seconds") or 0 for r in records)
    return {"setup": label, "load_1min_before": load, "load_1min_after": os.getloadavg()[0], "trials": done, "student_seconds": student_s, "wall_seconds": wall,
            "trials_per_hour": 3600 * done / student_s, "mean_trial_seconds": sum(secs) / max(len(secs), 1),
            # how busy Ray kept the nodes (trial time / (student phase x nodes)), and how many cores the
            # trials really got (their CPU time / the student phase): on a shared machine the second
            # node's CPU is only as free as the other sessions leave it
            "node_busy": sum(secs) / (student_s * (1 + workers)), "cores_used": cpu / student_s,
            "cpu_share_in_trial": cpu / distill if distill else None,
            "teacher_fine_tunes": board["budget"]["teacher_fine_tunes"], "best": board["best"]["score"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--rows", type=int, default=1200, help="training rows (sets a trial's cost)")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds: 2 runs each setup twice (1, 2, 2, 1 nodes)")
    ap.add_argument("--ceiling", action="store_true",
                    help="first measure the machine's own limit: a student trained alone vs two at once, no Ray")
    args = ap.parse_args()
    why = unshare_available()
    if why:
        raise SystemExit(f"the second node needs a private mount namespace: {why}")
    work = Path(tempfile.mkdtemp(prefix="bench-multinode-"))
    storage = Path("/var/tmp") / f"bench-multinode-{uuid.uuid4().hex[:8]}"
    os.environ["AUTODISTILL_CACHE"] = str(work / "cache")
    try:
        backbone = make_tiny_backbone(work / "backbone", layers=4, hidden=128, heads=4)
        space_file = work / "space.yaml"
        space_file.write_text(yaml.safe_dump(space(backbone, args.trials, args.rows, args.epochs)), encoding="utf-8")
        print(f"load before: {os.getloadavg()[0]:.2f} (1-min), {os.cpu_count()} cores", flush=True)
        if args.ceiling:
            c = ceiling(backbone, args.rows, args.epochs, work)
            print(f"machine ceiling (no Ray): one student alone {sum(c['alone_s']) / len(c['alone_s']):.1f} s, two at "
                  f"once {sum(c['together_s']) / len(c['together_s']):.1f} s each -> at most {c['ratio']:.2f}x "
                  f"{json.dumps(c)}", flush=True)
        order = ([0, 1, 1, 0] * ((args.rounds + 1) // 2))[: 2 * args.rounds]
        rows = []
        for workers in order:
            rows.append(run(f"{workers + 1} node{'s' if workers else ''} x 1 CPU", workers, space_file, args.trials,
                            work, storage))
            r = rows[-1]
            print(f"  {r['setup']}: {r['trials']} trials in {r['student_seconds']:.1f} s -> {r['trials_per_hour']:.0f}/h "
                  f"(load {r['load_1min_before']:.1f} -> {r['load_1min_after']:.1f})", flush=True)
        print(f"\n{'setup':<18} {'trials':>6} {'student s':>10} {'wall s':>8} {'s/trial':>8} {'trials/h':>9} "
              f"{'teacher fits':>12} {'nodes busy':>10} {'cores used':>10} {'load':>9} {'best':>7}")
        for r in rows:
            print(f"{r['setup']:<18} {r['trials']:>6} {r['student_seconds']:>10.1f} {r['wall_seconds']:>8.1f} "
                  f"{r['mean_trial_seconds']:>8.1f} {r['trials_per_hour']:>9.0f} {r['teacher_fine_tunes']:>12} "
                  f"{r['node_busy']:>10.2f} {r['cores_used']:>10.2f} "
                  f"{r['load_1min_before']:>4.1f}-{r['load_1min_after']:<4.1f} {r['best']:>7.4f}")
        total = {s: (sum(r["trials"] for r in rows if r["setup"] == s), sum(r["student_seconds"] for r in rows
                                                                            if r["setup"] == s))
                 for s in ("1 node x 1 CPU", "2 nodes x 1 CPU")}
        rate = {s: 3600 * n / secs for s, (n, secs) in total.items()}
        print(f"\ntrials/hour over all runs: 1 node {rate['1 node x 1 CPU']:.0f}, 2 nodes {rate['2 nodes x 1 CPU']:.0f}; "
              f"ratio (2 nodes / 1 node): {rate['2 nodes x 1 CPU'] / rate['1 node x 1 CPU']:.2f}x")
        print(json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
