"""A real multi-node Ray cluster on one machine, for tests and benchmarks.

The head is ``ray start --head --block`` in its own session. Each extra node is ``ray start --address
--block`` inside its own mount namespace (``unshare --mount --propagation private``) with a tmpfs on
``/tmp`` (its Ray temp dir, ``HOME`` and ``$AUTODISTILL_CACHE`` live there) and tmpfs mounts over any
folders it must not see (the dataset's): only the network - Ray - connects it to the head. Every
process is stopped by its own PID (never ``ray stop``, which stops every Ray on the machine).
"""
from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.ray_backend import free_port_range, free_ports

VENV_BIN = Path(sys.executable).parent
WORKER_HOME = "/tmp/home"                       # inside the worker's namespace (its own tmpfs)
WORKER_CACHE = "/tmp/home/autodistill-cache"


def unshare_available() -> str | None:
    """None when private mount namespaces work here, else why not."""
    if not shutil.which("unshare"):
        return "the unshare tool is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /tmp && test ! -e /tmp/.X11-unix-probe"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount fails here: {probe.stderr.strip()[:200]}"


WORKER_PORTS = 40


_USED_RANGES: set[int] = set()


def _node_ports() -> list[str]:
    (node_manager, object_manager, metrics, agent_grpc, agent_http, runtime_env) = free_ports(6)
    min_worker = free_port_range(WORKER_PORTS, _USED_RANGES)
    _USED_RANGES.update(range(min_worker, min_worker + WORKER_PORTS + 1))
    return [f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--metrics-export-port={metrics}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--dashboard-agent-listen-port={agent_http}", f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={min_worker}", f"--max-worker-port={min_worker + WORKER_PORTS}"]


def _code_under_tmp() -> list[Path]:
    """The folders a node needs to run this code (the venv, the repository) that lie under /tmp (a
    checkout cloned there, as CI may): the node's private /tmp must show them again."""
    paths = sorted({Path(sys.prefix).resolve(), Path(__file__).resolve().parents[1]}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in paths:
        if p.is_relative_to("/tmp") and not any(p.is_relative_to(k) for k in kept):
            kept.append(p)
    return kept


def _private_tmp() -> list[str]:
    """Shell steps giving the namespace an empty /tmp of its own, with only the code folders of
    :func:`_code_under_tmp` bound back in (through /mnt, this namespace's view of the old /tmp)."""
    keep = _code_under_tmp()
    if not keep:
        return ["mount -t tmpfs tmpfs /tmp"]
    steps = ["mount --bind /tmp /mnt", "mount -t tmpfs tmpfs /tmp"]
    for k in keep:
        rel = shlex.quote(str(Path("/mnt") / k.relative_to("/tmp")))
        steps += [f"mkdir -p {shlex.quote(str(k))}", f"mount --bind {rel} {shlex.quote(str(k))}"]
    return steps + ["umount -l /mnt"]


@dataclass
class LocalCluster:
    """``head_cpus`` on the head, then ``add_worker`` for each isolated node; ``env`` for drivers."""

    head_cpus: int = 1
    head_resources: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    address: str = ""
    head_temp: Path | None = None
    log_dir: Path | None = None        # each node's output (default: a folder next to the head's temp dir)

    def _log(self, name: str):
        if self.log_dir is None:
            import tempfile
            self.log_dir = Path(tempfile.mkdtemp(prefix="adray-logs-"))
        path = self.log_dir / f"{name}.log"
        self.logs.append(path)
        return open(path, "wb")

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.is_file())

    def __post_init__(self) -> None:
        self.logs: list[Path] = []
        self.env = {**os.environ, **self.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_metrics_collection": "0",
                    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    # ------------------------------------------------------------------ nodes
    def start_head(self, timeout: float = 60.0) -> str:
        gcs, client, dash, dash_metrics, autoscaler_metrics = free_ports(5)
        self.head_temp = Path("/tmp") / f"adrh-{os.getpid()}-{gcs}"   # Ray's socket paths must stay short
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--disable-usage-stats", "--include-dashboard=false",
               f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--temp-dir={self.head_temp}",
               *_node_ports()]
        if self.head_resources:
            cmd.append(f"--resources={self.head_resources}")
        env = {**self.env, "DASHBOARD_METRIC_PORT": str(dash_metrics), "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics)}
        with self._log("head") as log:
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        self.address = f"127.0.0.1:{gcs}"
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", gcs), timeout=1).close()
                break
            except OSError:
                if self.procs[0].poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the Ray head did not start (exit {self.procs[0].poll()}):\n{self.log_tail()}")
                time.sleep(0.5)
        return self.address

    def add_worker(self, num_cpus: int = 1, resources: str | None = None, hide: tuple[str, ...] = (),
                   extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """A node in its own mount namespace: tmpfs on /tmp (Ray's temp dir, HOME, cache) and on each
        folder in ``hide``; it reaches the head only through Ray's ports."""
        ray_cmd = [str(VENV_BIN / "ray"), "start", f"--address={self.address}", "--block",
                   "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0", "--disable-usage-stats",
                   "--temp-dir=/tmp/rayw", *_node_ports()]
        if resources:
            ray_cmd.append(f"--resources={resources}")
        script = " && ".join(
            [*_private_tmp(), *(f"mount -t tmpfs tmpfs {shlex.quote(h)}" for h in hide),
             f"mkdir -p {WORKER_CACHE}", f"exec {shlex.join(ray_cmd)}"])
        env = {**self.env, "HOME": WORKER_HOME, "AUTODISTILL_CACHE": WORKER_CACHE, "TMPDIR": "/tmp",
               **(extra_env or {})}
        with self._log(f"worker{len(self.procs)}") as log:
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` nodes are alive (asked through Ray's state API from a fresh process)."""
        code = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(sum(x['Alive'] for x in ray.nodes()))" % self.address)
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Ray node exited ({p.returncode}): {p.args}\n{self.log_tail()}")
            run = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                 timeout=60)
            if run.returncode == 0 and run.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"{n} Ray nodes did not come up within {timeout:.0f} s\n{self.log_tail()}")

    # ------------------------------------------------------------------ stopping
    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to each `ray start --block` (it stops what it started), workers first; the process
        group is killed if one hangs. Only the processes this object started."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        if self.head_temp is not None:
            shutil.rmtree(self.head_temp, ignore_errors=True)
        if self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
