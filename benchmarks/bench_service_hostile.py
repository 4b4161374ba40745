"""The service under hostile requests (issue 19): memory and latency while they run.

Starts a real `autodistill serve` (uvicorn, one process) on a free loopback port over a temporary state
folder, with the hub turned on and pointed at a local server that accepts connections and never answers.
While 8 clients poll `GET /healthz` and `GET /datasets` back to back, it sends the hostile bodies:

- a JSONL upload that is one 10 MB line (and the same line among 200 ordinary rows),
- a 1M-row Parquet file of a few KB,
- a 150 MB chunked JSON body without an API key to `POST /recommendations`,
- 42 `{"hf_name": ...}` requests at once to the hub that never answers.

It reports the peak RSS of the service and of its dataset worker process (VmHWM of each, and their sum
sampled every 50 ms), the healthy requests' latencies (max, p99) and
errors, and each hostile request's status and time. Targets: peak RSS < 1.5 GB, no healthy request over
1 s, every hostile request its 4xx.

    .venv/bin/python benchmarks/bench_service_hostile.py
    .venv/bin/python benchmarks/bench_service_hostile.py --hub-timeout 20 --json out.json

(From a git worktree, put it first: `PYTHONPATH=$PWD`; the service runs the tree Python imports.)
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from bench_service import BIN, start_service   # `autodistill serve` on a free loopback port, waited for


# --------------------------------------------------------------------------- the service and a silent hub
def black_hole() -> tuple[str, threading.Event]:
    """A TCP server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    srv.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
        for c in held:
            c.close()
        srv.close()
    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    """The service's child processes (its dataset worker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def tree_rss_mb(pid: int) -> float:
    return rss_mb(pid) + sum(rss_mb(c) for c in children(pid))


# --------------------------------------------------------------------------- hostile bodies
def one_line_jsonl(mb: float, extra_rows: int) -> bytes:
    words = " ".join(f"w{i}" for i in range(int(mb * 2**20 / 7)))
    rows = [json.dumps({"text": words, "label": 1})]
    rows += [json.dumps({"text": f"ordinary row {i} {'good' if i % 2 else 'bad'}", "label": i % 2})
             for i in range(extra_rows)]
    return ("\n".join(rows) + "\n").encode()


def million_row_parquet() -> bytes:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 1_000_000
    texts = pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 2, type=pa.int8()), pa.array(["good", "bad"]))
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "label": pa.array(np.arange(n) % 2)}), buf, compression="zstd")
    return buf.getvalue()


async def unauthenticated_json(port: int, total_mb: int) -> dict:
    """Stream a chunked JSON body of ``total_mb`` MB without a key: the answer's status and how many MB
    the server took before answering and before closing the connection."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /recommendations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"[" + b"1," * (2**19 - 1) + b"1"
    answer = asyncio.ensure_future(reader.readline())
    sent, sent_at_answer = 0, None
    try:
        await asyncio.wait_for(asyncio.shield(answer), 0.5)   # an answer before any body?
    except asyncio.TimeoutError:
        pass
    try:
        for _ in range(total_mb):
            if answer.done() and sent_at_answer is None:
                sent_at_answer = sent
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)
    except (ConnectionError, OSError):
        pass   # the server closed the connection: it does not read what it will not use
    try:
        status_line = (await asyncio.wait_for(answer, 10)).decode().strip()
    except (ConnectionError, OSError, asyncio.TimeoutError):
        status_line = ""
    writer.close()
    return {"status": int(status_line.split()[1]) if status_line else None,
            "mb_sent_before_answer": round((sent if sent_at_answer is None else sent_at_answer) / 2**20, 1),
            "mb_written_before_close": round(sent / 2**20, 1), "seconds": round(time.perf_counter() - t0, 2)}


async def upload(http: httpx.AsyncClient, name: str, data: bytes) -> dict:
    t0 = time.perf_counter()
    r = await http.post("/datasets", files={"file": (name, data)}, timeout=300)
    return {"status": r.status_code, "seconds": round(time.perf_counter() - t0, 2),
            "detail": r.json().get("detail", "")[:120] if r.status_code >= 400 else ""}


async def hub_requests(http: httpx.AsyncClient, n: int) -> dict:
    t0 = time.perf_counter()

    async def one(i: int) -> int:
        r = await http.post("/datasets", json={"hf_name": f"org/never-answers-{i}"}, timeout=300)
        return r.status_code
    codes = await asyncio.gather(*(one(i) for i in range(n)))
    return {"statuses": {c: codes.count(c) for c in sorted(set(codes))},
            "seconds": round(time.perf_counter() - t0, 2)}


# --------------------------------------------------------------------------- healthy clients
async def poller(http: httpx.AsyncClient, stop: asyncio.Event, latencies: list[float], errors: list[str],
                 slow: list[str], start: float) -> None:
    paths = ("/healthz", "/datasets")
    i = 0
    while not stop.is_set():
        path = paths[i % 2]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await http.get(path, timeout=30)
            if r.status_code != 200:
                errors.append(f"{path}: {r.status_code} {r.text[:100]}")
        except httpx.HTTPError as err:
            errors.append(f"{path}: {type(err).__name__}")
        latencies.append(time.perf_counter() - t0)
        if latencies[-1] > 1.0:
            slow.append(f"{path} at +{t0 - start:.1f} s took {latencies[-1]:.2f} s")
        await asyncio.sleep(0.05)


def poll_process(url: str, headers: dict, clients: int, stop, out) -> None:
    """The healthy clients, in a process of their own (so the hostile senders' work is not timed)."""
    async def run() -> None:
        latencies: list[float] = []
        errors: list[str] = []
        slow: list[str] = []
        start = time.perf_counter()
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            done.set()
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=httpx.Limits(max_connections=clients)) as http:
            await asyncio.gather(watch(), *(poller(http, done, latencies, errors, slow, start) for _ in range(clients)))
        out.put({"latencies": latencies, "errors": errors, "slow": slow})
    asyncio.run(run())


async def main_async(args, port: int, headers: dict, pid: int) -> dict:
    import multiprocessing
    bodies = {"one 10 MB line": one_line_jsonl(10, 0), "a 10 MB line + 200 rows": one_line_jsonl(10, 200),
              "1M-row Parquet": million_row_parquet()}
    peak = {"sampled_rss_mb": tree_rss_mb(pid)}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak["sampled_rss_mb"] = max(peak["sampled_rss_mb"], tree_rss_mb(pid))
            await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    ctx = multiprocessing.get_context("spawn")
    poll_stop, poll_out = ctx.Event(), ctx.Queue()
    pollers = ctx.Process(target=poll_process, args=(url, headers, args.clients, poll_stop, poll_out))
    pollers.start()
    start = time.perf_counter()

    async def timed(coro) -> dict:
        t0 = time.perf_counter() - start
        return {**await coro, "started_at_s": round(t0, 1)}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=httpx.Limits(max_connections=100)) as http:
        sampler = asyncio.ensure_future(sample())
        await asyncio.sleep(3)   # the pollers are up
        hostile = await asyncio.gather(*(timed(c) for c in (
            upload(http, "one-line.jsonl", bodies["one 10 MB line"]),
            upload(http, "line-and-rows.jsonl", bodies["a 10 MB line + 200 rows"]),
            upload(http, "million.parquet", bodies["1M-row Parquet"]),
            unauthenticated_json(port, args.json_mb),
            hub_requests(http, args.hub_requests))))
        await asyncio.sleep(1)
        stop.set()
        await sampler
    poll_stop.set()
    polled = await asyncio.get_running_loop().run_in_executor(None, poll_out.get)
    pollers.join()
    latencies = sorted(polled["latencies"])
    names = ["one 10 MB line (JSONL)", "a 10 MB line + 200 rows (JSONL)", "1M-row Parquet",
             f"{args.json_mb} MB chunked JSON, no key", f"{args.hub_requests} hf_name requests, silent hub"]
    return {"peak_rss_mb (VmHWM: service, + its dataset worker)": [round(rss_mb(p, "VmHWM"), 1)
                                                                  for p in [pid, *children(pid)]],
            "sampled_peak_rss_mb (service + worker, every 50 ms)": round(peak["sampled_rss_mb"], 1),
            "healthy": {"clients": args.clients, "requests": len(latencies), "n_errors": len(polled["errors"]),
                        "errors": polled["errors"][:10], "max_s": round(latencies[-1], 3),
                        "p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
                        "p50_s": round(latencies[len(latencies) // 2], 3),
                        "over_1s": sum(x > 1.0 for x in latencies), "slow": polled["slow"][:10]},
            "hostile": dict(zip(names, hostile))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--json-mb", type=int, default=150)
    ap.add_argument("--hub-requests", type=int, default=42)
    ap.add_argument("--hub-timeout", type=float, default=20.0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    hub_url, hub_stop = black_hole()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTODISTILL_SERVICE_", "HF_HUB_OFFLINE"))}
        env.update(AUTODISTILL_SERVICE_HUB_ENABLED="1", AUTODISTILL_SERVICE_HUB_ENDPOINT=hub_url,
                   AUTODISTILL_SERVICE_HUB_TIMEOUT_S=str(args.hub_timeout), AUTODISTILL_CACHE=str(Path(tmp) / "cache"),
                   TOKENIZERS_PARALLELISM="false")
        key = subprocess.run([str(BIN), "keys", "--state-dir", str(state), "create", "bench"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        port = free_port()
        proc = start_service(state, port, env)
        try:
            # the first upload loads the meta-features backbone: warm it up so the figures are of the attack
            warm = httpx.post(f"http://127.0.0.1:{port}/datasets", headers={"Authorization": f"Bearer {key}"},
                              files={"file": ("warm.jsonl", one_line_jsonl(0.001, 60))}, timeout=300)
            print(f"warm-up upload: {warm.status_code}; RSS {tree_rss_mb(proc.pid):.0f} MB", file=sys.stderr)
            result = asyncio.run(main_async(args, port, {"Authorization": f"Bearer {key}"}, proc.pid))
            result["service_alive"] = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            hub_stop.set()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
