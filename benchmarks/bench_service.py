"""`POST /recommendations` latency (p50/p99) and throughput with 32 concurrent clients on loopback.

Starts `autodistill serve` (real uvicorn, one worker) on a free port over a temporary state folder,
uploads the bundled CR dataset once, then runs a bounded loop: each of --clients clients sends
--requests-per-client recommendation requests back to back (after --warmup requests that are not
counted).

    .venv/bin/python benchmarks/bench_service.py
    .venv/bin/python benchmarks/bench_service.py --clients 32 --requests-per-client 20 --top-k 5
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autodistill.data import bundled_dataset_path

BIN = Path(sys.executable).with_name("autodistill")


def start_service(state: Path, port: int, env: dict) -> subprocess.Popen:
    log = open(state / "serve.log", "wb")
    proc = subprocess.Popen([str(BIN), "serve", "--port", str(port), "--state-dir", str(state)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError((state / "serve.log").read_text())


async def client_loop(http: httpx.AsyncClient, body: dict, n: int, latencies: list[float], errors: list[int]) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        r = await http.post("/recommendations", json=body)
        latencies.append(time.perf_counter() - t0)
        if r.status_code != 200:
            errors.append(r.status_code)


async def run(url: str, headers: dict, body: dict, clients: int, per_client: int, warmup: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client_loop(http, body, warmup, [], []) for _ in range(min(clients, 4))))
        latencies: list[float] = []
        errors: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(http, body, per_client, latencies, errors) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100)
    return {"requests": len(lat), "errors": len(errors), "wall_s": wall, "throughput_rps": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p90_ms": 1000 * q[89], "p99_ms": 1000 * q[98],
            "max_ms": 1000 * lat[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args()
    from service.ray_backend import free_ports

    state = Path(tempfile.mkdtemp(prefix="bench-service-"))
    env = {**os.environ, "AUTODISTILL_SERVICE_META_FEATURES_BACKBONE": "", "HF_HUB_OFFLINE": "1"}
    key = subprocess.run([str(BIN), "keys", "--state-dir", str(state), "create", "bench"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    port = free_ports(1)[0]
    proc = start_service(state, port, env)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        with open(bundled_dataset_path() / "train.jsonl", "rb") as fh:
            ds = httpx.post(f"{url}/datasets", files={"file": ("cr.jsonl", fh)}, headers=headers, timeout=300).json()
        body = {"dataset_id": ds["id"], "top_k": args.top_k}
        single = []
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:   # one kept-alive connection
            for _ in range(50):
                t0 = time.perf_counter()
                assert http.post("/recommendations", json=body).status_code == 200
                single.append(time.perf_counter() - t0)
        result = asyncio.run(run(url, headers, body, args.clients, args.requests_per_client, args.warmup))
        result["single_client_p50_ms"] = 1000 * statistics.median(single)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    print(f"POST /recommendations, top_k {args.top_k}, {args.clients} concurrent clients x "
          f"{args.requests_per_client} requests (1 uvicorn worker, loopback, {os.cpu_count()} CPUs):")
    print(f"  p50 {result['p50_ms']:.0f} ms, p90 {result['p90_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
          f"max {result['max_ms']:.0f} ms; throughput {result['throughput_rps']:.1f} req/s; "
          f"errors {result['errors']}/{result['requests']}")
    print(f"  one client alone: p50 {result['single_client_p50_ms']:.0f} ms")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
