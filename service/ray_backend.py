"""Where searches run: Ray Jobs on a Ray cluster, through the Ray Jobs API.

``JobBackend`` is the small interface the service needs (submit / status / stop / log tail);
``RayJobsBackend`` implements it with ``ray.job_submission.JobSubmissionClient``. With no cluster
configured, ``LocalRayHead`` starts one (``ray start --head --block`` in its own session, GCS and
dashboard on loopback, free ports, token auth) and records it in ``<state_dir>/ray/head.json``: the head
outlives a service restart, and the restarted service finds it again there.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("autodistill.service")

LOG_TAIL_LINES = 200
LOG_TAIL_BYTES = 64 * 1024

# Ray job states -> search states
JOB_STATES = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
              "STOPPED": "cancelled"}


class JobBackend(abc.ABC):
    """Runs one search per job, named by the search id."""

    @abc.abstractmethod
    def submit(self, job_id: str, entrypoint: list[str], env: dict[str, str], files: Path | None = None) -> None:
        """Run ``entrypoint`` as job ``job_id``; ``files`` (a folder: the dataset, the request) and the
        autodistill package travel with the job's runtime_env (for a cluster that shares no disk)."""

    @abc.abstractmethod
    def status(self, job_id: str) -> str | None:
        """A search state (see JOB_STATES), or None when the cluster does not know the job."""

    @abc.abstractmethod
    def stop(self, job_id: str) -> None: ...

    @abc.abstractmethod
    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the job's output, at most LOG_TAIL_BYTES of them: a job's whole log
        can be any size, and the service reads it only to tell why a job failed."""


class RayJobsBackend(JobBackend):
    # (connect, read) seconds for each call to the cluster's job server: Ray's SDK sets none, so a cluster that
    # accepts and never answers would hold a request thread (GET /searches/{id}, a cancel) forever
    REQUEST_TIMEOUT: tuple[float, float] = (5.0, 60.0)

    def __init__(self, address: str, token: str | None = None, entrypoint_cpus: float | None = None,
                 entrypoint_gpus: float | None = None):
        self.address = address
        self.token = token
        self.entrypoint_cpus = entrypoint_cpus   # Ray counts the job's driver (teacher fine-tune) too
        self.entrypoint_gpus = entrypoint_gpus   # a GPU for the driver's teacher fine-tune, if any
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient
            timeout = self.REQUEST_TIMEOUT

            class BoundedClient(JobSubmissionClient):
                def _do_request(self, method, endpoint, **kwargs):   # every SDK call goes through here
                    kwargs.setdefault("timeout", timeout)
                    return super()._do_request(method, endpoint, **kwargs)

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._client = BoundedClient(self.address, headers=headers)
        return self._client

    def submit(self, job_id: str, entrypoint: list[str], env: dict[str, str], files: Path | None = None) -> None:
        import shlex
        self.client.submit_job(entrypoint=shlex.join(entrypoint), submission_id=job_id,
                               runtime_env=job_runtime_env(env, files), metadata={"autodistill_search": job_id},
                               entrypoint_num_cpus=self.entrypoint_cpus or None,
                               entrypoint_num_gpus=self.entrypoint_gpus or None)

    def status(self, job_id: str) -> str | None:
        try:
            status = self.client.get_job_status(job_id)
        except RuntimeError as err:   # the SDK raises RuntimeError for an unknown submission id
            if "404" in str(err) or "does not exist" in str(err).lower() or "not found" in str(err).lower():
                return None
            raise
        return JOB_STATES.get(str(getattr(status, "value", status)), "running")

    def stop(self, job_id: str) -> None:
        self.client.stop_job(job_id)

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> str:
        # the dashboard's log API tails the driver's log file on its node (the Jobs API's get_job_logs sends
        # the whole log). A job whose driver never ran, or whose node is gone, has none: Ray's own message
        # (node addresses, process ids) goes to the server log only
        info = self.client.get_job_info(job_id)
        tail = ""
        if info.driver_node_id:   # the API's options need a node, though with a submission id it finds its own
            c = self.client
            try:
                tail = read_log_tail(f"{c._address}/api/v0/logs/file",
                                     {"submission_id": job_id, "node_id": info.driver_node_id, "lines": int(lines)},
                                     headers=c._headers, cookies=c._cookies, verify=c._verify,
                                     timeout=self.REQUEST_TIMEOUT)
            except Exception as err:  # noqa: BLE001 - the message below still says what Ray knows
                log.warning("job %s: its log could not be read: %s", job_id, err)
        if not tail:
            log.warning("job %s ended without a log to read; Ray says: %s", job_id, (info.message or "")[-4000:])
        return tail


def read_log_tail(url: str, params: dict[str, Any], **request: Any) -> str:
    """GET a log, streamed, keeping only its last LOG_TAIL_BYTES (not through the SDK's request helper, which
    reads the whole body for its error check)."""
    import requests
    with requests.get(url, params=params, stream=True, **request) as response:
        if response.status_code != 200:
            said = next(response.iter_content(300), b"").decode("utf-8", errors="replace")
            raise RuntimeError(f"the job log was not available ({response.status_code}): {said}")
        return bounded_tail(response.iter_content(chunk_size=16 * 1024), LOG_TAIL_BYTES)


def bounded_tail(chunks, max_bytes: int) -> str:
    """The last ``max_bytes`` of a byte stream, holding at most that plus one chunk in memory."""
    kept = b""
    for chunk in chunks:
        kept = (kept + chunk)[-max_bytes:]
    return kept.decode("utf-8", errors="replace")


def job_runtime_env(env: dict[str, str], files: Path | None) -> dict[str, Any]:
    """The job's runtime_env: its environment variables, and with ``files`` the folder as the job's
    working_dir plus the autodistill package as a py_module. Ray uploads both to the cluster (GCS) and
    unpacks them on every node that runs the driver or a trial: the cluster needs the dependencies
    installed (torch, transformers, ray), not this machine's code or data."""
    runtime_env: dict[str, Any] = {"env_vars": dict(env)}
    if files is not None:
        import autodistill
        runtime_env["working_dir"] = str(files)
        runtime_env["py_modules"] = [str(Path(autodistill.__file__).resolve().parent)]
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
    return runtime_env


# --------------------------------------------------------------------------- the embedded local head
def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_port_range(width: int, taken: set[int] | frozenset[int] = frozenset()) -> int:
    """The first port of ``width + 1`` free consecutive ports for a Ray node's workers, below the
    kernel's ephemeral ports (where :func:`free_ports` draws every other component's), so that no
    other component lands inside it (Ray refuses to start then: "trying to use a port number ... that is
    used by other components")."""
    import random

    def bindable(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return True
            except OSError:
                return False

    for _ in range(200):
        base = random.randrange(20000, 32000 - width)
        span = range(base, base + width + 1)
        if not taken.intersection(span) and all(bindable(p) for p in span):
            return base
    raise RuntimeError("no free port range for Ray's workers")


def _is_head_process(info: "HeadInfo") -> bool:
    """Whether ``info.pid`` is still the `ray start --head` recorded in ``info`` (not a process, another Ray
    head included, that reused the number after a reboot, nor a zombie, whose command line is empty)."""
    pid = info.pid
    if not Path("/proc/self/cmdline").is_file():   # no /proc: whether the process exists at all
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"--head\x00" in cmdline and f"--temp-dir={info.temp_dir}\x00".encode() in cmdline


def _answers(url: str, token: str | None, timeout: float = 3.0) -> bool:
    req = urllib.request.Request(f"{url}/api/version",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


@dataclass
class HeadInfo:
    dashboard_url: str
    gcs_address: str
    pid: int
    token: str
    temp_dir: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class LocalRayHead:
    """A Ray head on this machine for the embedded default (GCS on 127.0.0.1, dashboard on ``host``)."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", num_cpus: int | None = None):
        self.dir = Path(state_dir) / "ray"
        self.host = host
        self.num_cpus = num_cpus
        self.info_path = self.dir / "head.json"

    def read(self) -> HeadInfo | None:
        if not self.info_path.is_file():
            return None
        try:
            return HeadInfo(**json.loads(self.info_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None

    def ensure(self, timeout: float = 120.0) -> HeadInfo:
        """The running head recorded in head.json, or a new one (one per state folder, across processes).
        A recorded head whose process lives is waited for, never replaced: a second head beside a slow one
        would not know its jobs, and the service would submit every search again."""
        from filelock import FileLock
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with FileLock(str(self.dir / "head.lock")):
            info = self.read()
            if info is None or not _is_head_process(info):
                return self.start(timeout)
            deadline = time.time() + timeout
            while not _answers(info.dashboard_url, info.token):
                if not _is_head_process(info):
                    return self.start(timeout)
                if time.time() > deadline:
                    raise RuntimeError(f"the local Ray head (pid {info.pid}) runs but has not answered for "
                                       f"{timeout:.0f} s; see {self.dir / 'head.log'}")
                time.sleep(1)
            return info

    def start(self, timeout: float = 120.0) -> HeadInfo:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        token = secrets.token_hex(32)
        (gcs, node_manager, object_manager, metrics, agent_grpc, agent_http, runtime_env, client, dash,
         dash_metrics, autoscaler_metrics) = free_ports(11)
        min_worker = free_port_range(60)
        tag = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:8]
        # Ray makes its temp folder world-writable (0777): it lives inside a folder of ours with mode 0700,
        # so no other user reaches it; the paths stay short (Ray's socket paths have a length limit)
        private = Path("/tmp") / f"adsvc-{tag}"
        private.mkdir(mode=0o700, exist_ok=True)
        os.chmod(private, 0o700)
        temp_dir = private / str(gcs)
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
               "--disable-usage-stats", "--include-dashboard=true", f"--dashboard-host={self.host}",
               f"--dashboard-port={dash}", f"--node-manager-port={node_manager}",
               f"--object-manager-port={object_manager}", f"--metrics-export-port={metrics}",
               f"--dashboard-agent-grpc-port={agent_grpc}", f"--dashboard-agent-listen-port={agent_http}",
               f"--runtime-env-agent-port={runtime_env}", f"--ray-client-server-port={client}",
               f"--min-worker-port={min_worker}", f"--max-worker-port={min_worker + 60}",
               f"--temp-dir={temp_dir}"]
        if self.num_cpus:
            cmd.append(f"--num-cpus={self.num_cpus}")
        # the dashboard's and the autoscaler's Prometheus servers default to fixed ports (44227, 44217),
        # which collide with any other Ray on the host: free ports instead
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
               "DASHBOARD_METRIC_PORT": str(dash_metrics), "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
               # a single-node cluster: Ray then takes 127.0.0.1 as the node's address (not the machine's
               # interface), so what Ray binds to "the node's address" is loopback
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               # no per-node metrics exporter (an unauthenticated Prometheus endpoint): the service reads none
               "RAY_enable_metrics_collection": "0"}
        log = os.fdopen(os.open(self.dir / "head.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        url_host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        info = HeadInfo(f"http://{url_host}:{dash}", f"127.0.0.1:{gcs}", proc.pid, token, str(temp_dir))
        deadline = time.time() + timeout
        while not _answers(info.dashboard_url, token, timeout=2):
            if proc.poll() is not None:
                raise RuntimeError(f"the local Ray head exited ({proc.returncode}); see {self.dir / 'head.log'}")
            if time.time() > deadline:
                stop_head(info)
                raise RuntimeError(f"the local Ray head did not answer within {timeout:.0f} s; "
                                   f"see {self.dir / 'head.log'}")
            time.sleep(1)
        self._wait_for_job_agent(info, deadline)
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(info.to_json(), encoding="utf-8")
        os.chmod(tmp, 0o600)   # holds the cluster token
        os.replace(tmp, self.info_path)
        return info

    @staticmethod
    def _wait_for_job_agent(info: HeadInfo, deadline: float) -> None:
        """The job server answers a little after the dashboard; a job list call proves it is up."""
        backend = RayJobsBackend(info.dashboard_url, info.token)
        while True:
            try:
                backend.client.list_jobs()
                return
            except Exception:  # noqa: BLE001 - any failure here means "not ready yet"
                if time.time() > deadline:
                    raise
                time.sleep(1)

    def stop(self) -> None:
        info = self.read()
        if info is not None:
            stop_head(info)
            self.info_path.unlink(missing_ok=True)


def stop_head(info: HeadInfo, timeout: float = 60.0) -> None:
    """Stop the processes of this head only (never `ray stop`, which kills every Ray on the machine):
    SIGTERM to `ray start --block` stops what it started; its process group is killed if it hangs."""
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return
        if _reap(info.pid):
            return
        time.sleep(0.5)
    try:
        os.killpg(info.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False


def backend_from_settings(settings: Any) -> tuple[JobBackend, LocalRayHead | None]:
    if settings.ray_address:
        return RayJobsBackend(settings.ray_address, settings.ray_auth_token, settings.search_entrypoint_cpus,
                              settings.search_entrypoint_gpus), None
    head = LocalRayHead(settings.state_dir, settings.ray_host, settings.ray_num_cpus)
    return LazyLocalBackend(head, settings.search_entrypoint_cpus), head


class LazyLocalBackend(JobBackend):
    """The embedded default: the local head is started (or found) on first use, not at import."""

    def __init__(self, head: LocalRayHead, entrypoint_cpus: float | None = None):
        self.head = head
        self.entrypoint_cpus = entrypoint_cpus
        self._backend: RayJobsBackend | None = None
        self._lock = threading.Lock()   # the monitor and a request must not both start a head

    def _get(self) -> RayJobsBackend:
        with self._lock:
            if self._backend is None or not _answers(self._backend.address, self._backend.token, timeout=2):
                info = self.head.ensure()
                self._backend = RayJobsBackend(info.dashboard_url, info.token, self.entrypoint_cpus)
            return self._backend

    def submit(self, job_id: str, entrypoint: list[str], env: dict[str, str], files: Path | None = None) -> None:
        self._get().submit(job_id, entrypoint, env, files)

    def status(self, job_id: str) -> str | None:
        return self._get().status(job_id)

    def stop(self, job_id: str) -> None:
        self._get().stop(job_id)

    def log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> str:
        return self._get().log_tail(job_id, lines)
