"""A Ray cluster of several nodes on this machine, started with the project's own launch scripts (for e2e tests).

`LocalCluster` starts the head with `launch/start_head --node-ip 127.0.0.1 --temp-dir <A> --block` and each worker
with `launch/start_worker --head 127.0.0.1:<port> --node-ip 127.0.0.<k> --temp-dir <B> --block`, token
authentication on (a private token file of the cluster's own), every port explicit and disjoint (two raylets on one
machine cannot share the defaults), logical GPUs and CPUs declared per node as the CPU platform needs them. Every
address is a loopback one: Linux routes all of 127.0.0.0/8 to this machine.

A node's processes are the `ray start --block` process of its script and everything below it (GCS, raylet,
dashboard, agents, the workers its raylet forks, the vLLM engines those fork); a process whose parent died is
re-parented out of that tree, so the tree is sampled as it grows (`sample`) and every process ever seen stays
known. `stop_node` stops one node the way `ray stop` stops a machine's Ray (SIGTERM, SIGKILL after a grace
period), but only that node's processes; `leftovers` lists what still runs of the jobs after they ended.

Importable from tests as `import local_cluster` (pyproject's pytest `pythonpath` includes tests/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SUBMIT = LAUNCH / "submit"

NODE_PORTS = ("node_manager", "object_manager", "agent_http", "agent_grpc", "runtime_env_agent", "metrics")
"""The ports every node binds (`ray start` options below); the head also binds gcs, dashboard and client."""

WORKER_PORTS = 100
"""Ports per node for Ray's worker processes (--min-worker-port .. --max-worker-port)."""

ORPHAN_MARKS = ("ray::", "VLLM::", "multiprocessing", "raylet", "gcs_server", "lambda_grpo")
"""Command-line marks of the processes a Ray node or a job of ours starts (worker titles, vLLM's engine titles, the
helpers multiprocessing spawns)."""

IDLE_WORKER = "ray::IDLE"
"""The title of a worker process in Ray's pool, not running anything (kept for the next task or job)."""

NODE_DAEMONS = ("/raylet/raylet ", "/gcs_server ", "log_monitor.py", "ray::DashboardAgent", "ray::RuntimeEnvAgent",
                "dashboard/dashboard.py", "autoscaler/_private/monitor.py")
"""Command-line marks of a Ray node's own daemons: a node restarted just before a job starts some of them after the
snapshot that tells the job's processes apart."""

JOB_SUPERVISION = ("JobSupervisor", "while kill -s 0")
"""Ray's job supervisor actor and the shell loop with which it watches its entrypoint: Ray's, not the job's."""


def free_port_block(size: int) -> int:
    """First port of `size` consecutive ports that are free on loopback now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - size)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {size} consecutive free ports on loopback")


def script_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any Ray address or token of its own, this venv first on PATH."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def command_line(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "?"


@dataclasses.dataclass
class Node:
    """One `ray start --block` of the cluster: its script's process, address, temp dir and the processes seen."""

    name: str
    ip: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path
    seen: dict[int, psutil.Process] = dataclasses.field(default_factory=dict)
    titles: set[str] = dataclasses.field(default_factory=set)

    def sample(self) -> list[psutil.Process]:
        """The node's current process tree, also added to `seen` (and each command line to `titles`)."""
        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in tree:
            self.seen.setdefault(proc.pid, proc)
            self.titles.add(command_line(proc)[:120])
        return tree

    def alive(self) -> list[psutil.Process]:
        self.sample()
        return [proc for proc in self.seen.values() if _running(proc)]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LocalCluster:
    """A head and `workers` worker nodes on loopback, started by launch/start_head and launch/start_worker."""

    def __init__(self, workers: int = 1, gpus_per_node: int = 1, cpus_per_node: int = 16,
                 env: Mapping[str, str] | None = None) -> None:
        # Short paths: Ray's unix sockets live under the temp dirs and must stay under 107 characters.
        self.scratch = Path(tempfile.mkdtemp(prefix="lg-nodes-", dir="/tmp"))
        self.token_path = self.scratch / "auth_token"
        self.env = script_env({**(env or {}), "RAY_AUTH_TOKEN_PATH": str(self.token_path)})
        self.gpus_per_node, self.cpus_per_node = gpus_per_node, cpus_per_node
        self.nodes: list[Node] = []
        # Ports for the head, each worker, and each worker once more (a restart after `stop_node`).
        base = free_port_block(3 + (1 + 2 * workers) * (len(NODE_PORTS) + WORKER_PORTS))
        self.gcs_port, self.dashboard_port, self.client_port = base, base + 1, base + 2
        self._next_port = base + 3
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.worker_count = workers
        self.started = time.time()

    # ------------------------------------------------------------------------------------------
    # Starting and stopping nodes.

    def _node_ports(self) -> list[str]:
        base = self._next_port
        self._next_port += len(NODE_PORTS) + WORKER_PORTS
        ports = dict(zip(NODE_PORTS, range(base, base + len(NODE_PORTS))))
        workers = base + len(NODE_PORTS)
        return ["--node-manager-port", str(ports["node_manager"]),
                "--object-manager-port", str(ports["object_manager"]),
                "--dashboard-agent-listen-port", str(ports["agent_http"]),
                "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
                "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
                "--metrics-export-port", str(ports["metrics"]),
                "--min-worker-port", str(workers), "--max-worker-port", str(workers + WORKER_PORTS - 1)]

    def _start(self, name: str, ip: str, script: list[str], ray_args: list[str]) -> Node:
        temp_dir = self.scratch / name
        log = self.scratch / f"{name}.log"
        resources = ["--num-gpus", str(self.gpus_per_node), "--num-cpus", str(self.cpus_per_node)]
        with log.open("a") as out:
            proc = subprocess.Popen([*script, "--node-ip", ip, "--temp-dir", str(temp_dir), *resources, "--block",
                                     "--", *ray_args, *self._node_ports()],
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, ip, temp_dir, proc, log)
        self.nodes.append(node)
        return node

    def start(self, timeout_s: float = 120) -> "LocalCluster":
        """The head, then the workers; returns once the job API answers and every node is alive in Ray."""
        head = self._start("A", "127.0.0.1", [str(LAUNCH / "start_head"), "--port", str(self.gcs_port),
                                              "--dashboard-port", str(self.dashboard_port)],
                           ["--ray-client-server-port", str(self.client_port)])
        self._wait_for_job_api(head, timeout_s)
        for index in range(self.worker_count):
            self.start_worker(index, timeout_s)
        return self

    def start_worker(self, index: int = 0, timeout_s: float = 120) -> Node:
        """(Re)start worker node `index` (address 127.0.0.<index + 2>, temp dir B, C, ...; B2 ... when restarted) and
        wait until Ray has it."""
        ip = f"127.0.0.{index + 2}"
        starts = sum(node.ip == ip for node in self.nodes)
        name = chr(ord("B") + index) + (str(starts + 1) if starts else "")
        node = self._start(name, ip, [str(LAUNCH / "start_worker"), "--head", f"127.0.0.1:{self.gcs_port}"], [])
        deadline = time.monotonic() + timeout_s
        while ip not in self.alive_node_ips():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker node {ip} did not join:\n{node.log.read_text()[-3000:]}")
            time.sleep(1)
        return node

    def node(self, ip: str) -> Node:
        """The latest node started with this address."""
        return [node for node in self.nodes if node.ip == ip][-1]

    def _wait_for_job_api(self, head: Node, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if head.proc.poll() is not None:
                raise RuntimeError(f"launch/start_head exited:\n{head.log.read_text()[-3000:]}")
            try:
                self.api("/api/version")
                return
            except (urllib.error.URLError, OSError, FileNotFoundError):
                time.sleep(0.5)
        raise TimeoutError(f"Ray job API not up after {timeout_s} s:\n{head.log.read_text()[-3000:]}")

    def api(self, path: str) -> object:
        """GET a path of the job API / dashboard with the cluster's token; the decoded JSON."""
        request = urllib.request.Request(f"{self.address}{path}",
                                         headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def alive_node_ips(self) -> list[str]:
        """The addresses of the nodes Ray reports alive (the dashboard's node list)."""
        try:
            nodes = self.api("/nodes?view=summary")["data"]["summary"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return []
        return sorted(node["raylet"]["nodeManagerAddress"] for node in nodes if node["raylet"]["state"] == "ALIVE")

    def stop_node(self, node: Node, grace_s: float = 10) -> float:
        """`ray stop` for one node: SIGTERM to each of its processes, SIGKILL to what is left after `grace_s`.

        `ray stop` itself stops every Ray process of the machine (it matches process names), which here would be
        both nodes; this stops only the node's own process tree. Returns the seconds it took.
        """
        start = time.monotonic()
        procs = node.alive()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, left = psutil.wait_procs(procs, timeout=grace_s)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=10)
        return time.monotonic() - start

    def sample(self) -> list[psutil.Process]:
        """Every node's current processes (and remember them)."""
        return [proc for node in self.nodes for proc in node.sample()]

    def processes(self) -> list[psutil.Process]:
        """Every running process ever seen in a node's tree."""
        return [proc for node in self.nodes for proc in node.alive()]

    def snapshot(self) -> set[int]:
        """The pids of the cluster's processes now: take it before a job, to tell the job's processes apart."""
        return {proc.pid for proc in self.processes()}

    def job_processes(self, before: set[int]) -> list[psutil.Process]:
        """The running processes that appeared since the snapshot `before`, except Ray's own: idle pool workers and
        the nodes' daemons."""
        return [proc for proc in self.processes() if proc.pid not in before
                and not any(mark in command_line(proc) for mark in (IDLE_WORKER, *NODE_DAEMONS))]

    def leftovers(self, before: set[int], timeout_s: float = 30) -> list[str]:
        """What still runs of a job that ended, after up to `timeout_s` (Ray ends a job's workers asynchronously):
        its processes in the nodes' trees, and orphans (re-parented to init) of Ray or vLLM started since the
        cluster."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.job_processes(before) + [proc for proc in self.orphans() if proc.pid not in before]
            if not left or time.monotonic() > deadline:
                return sorted({f"{proc.pid} {command_line(proc)[:200]}" for proc in left})
            time.sleep(1)

    def orphans(self) -> list[psutil.Process]:
        """Processes of Ray or vLLM whose parent died (now children of init) started since this cluster."""
        found = []
        for proc in psutil.process_iter(["ppid", "create_time"]):
            if proc.info["ppid"] == 1 and proc.info["create_time"] >= self.started and \
                    any(mark in command_line(proc) for mark in ORPHAN_MARKS):
                found.append(proc)
        return found

    def wait_for_process(self, marker: str, timeout_s: float, node: Node | None = None,
                         poll_s: float = 0.05) -> psutil.Process:
        """The first process (of `node`, else of any node) whose command line or Ray title contains `marker`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in (node.sample() if node else self.sample()):
                if marker in command_line(proc):
                    return proc
            time.sleep(poll_s)
        raise TimeoutError(f"no process {marker!r} within {timeout_s:.0f} s")

    def job_victims(self, before: set[int]) -> list[psutil.Process]:
        """The running job(s)' processes on every node, without Ray's job supervisor (which reports how a job
        ended): what `kill_job` kills. Listing them walks every node's process tree (a while on 2 busy cores)."""
        return [proc for proc in self.job_processes(before)
                if not any(mark in command_line(proc) for mark in JOB_SUPERVISION)]

    def kill_job(self, before: set[int], victims: list[psutil.Process] | None = None) -> list[str]:
        """SIGKILL every process of the running job(s) on every node at once, as the OOM killer or a crash does
        (`victims`: listed beforehand, so that the kill itself takes milliseconds), then any that started since;
        what was killed."""
        killed: dict[int, psutil.Process] = {}
        for batch in (victims or [], None):
            for proc in self.job_victims(before) if batch is None else batch:
                if proc.pid not in killed:
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                        killed[proc.pid] = proc
        return [command_line(proc)[:80] for proc in killed.values()]

    def shutdown(self) -> list[str]:
        """Stop every node; return what was still running after that (nothing, normally), then remove the files."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None or node.alive():
                self.stop_node(node)
        left = [f"{proc.pid} {command_line(proc)[:200]}" for proc in self.processes()]
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.scratch, ignore_errors=True)
        return left

    # ------------------------------------------------------------------------------------------
    # Jobs.

    def submit(self, args: Sequence[str], *, wait: bool = True, timeout_s: float = 600,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
        """`launch/submit --address <this cluster> <args>` (waiting for the job unless `wait` is False)."""
        command = [str(SUBMIT), "--address", self.address, *([] if wait else ["--no-wait"]), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout_s, cwd=cwd)

    def submit_async(self, args: Sequence[str], log: Path) -> "Job":
        """`launch/submit <args>` in the background, streaming the job's log into `log`."""
        with log.open("w") as out:
            proc = subprocess.Popen([str(SUBMIT), "--address", self.address, *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return Job(self, proc, log)

    def total_rss_gib(self) -> float:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**30



class Job:
    """A `launch/submit` running in the background: its output as it comes, its end, the peak RSS of the cluster."""

    SUBMITTED = re.compile(r"Submitting job (\S+) to")

    def __init__(self, cluster: LocalCluster, proc: subprocess.Popen, log: Path) -> None:
        self.cluster, self.proc, self.log = cluster, proc, log
        self.started = time.monotonic()
        self.peak_rss_gib = 0.0
        self._last_rss = 0.0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def job_id(self) -> str:
        return self.SUBMITTED.search(self.output())[1]

    def poll(self) -> None:
        """Sample the node trees (so that no process of the job goes unseen) and, every 2 s, the cluster's RSS."""
        self.cluster.sample()
        if time.monotonic() - self._last_rss > 2:
            self._last_rss = time.monotonic()
            self.peak_rss_gib = max(self.peak_rss_gib, self.cluster.total_rss_gib())

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """Wait until the output matches `pattern`; the match."""
        deadline = time.monotonic() + timeout_s
        while not (match := pattern.search(self.output())):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the job ended (exit {self.proc.returncode}) before {pattern.pattern!r}:\n"
                                   f"{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern.pattern!r} within {timeout_s:.0f} s:\n{self.output()[-4000:]}")
            self.poll()
            time.sleep(0.2)
        return match

    def end(self, timeout_s: float) -> int | None:
        """Wait for `launch/submit` to return; its exit status, or None if it did not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.2)
        return self.proc.poll()
