"""A fleet on one machine: N refserver replicas on loopback ports, each pinned to a core
(`taskset`, `-t 1`), behind one `smg` gateway (Shepherd Model Gateway).

Used by `python -m bench.scale` and `python -m bench.failover`; deploy/ has the same
commands as shell scripts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value}, labelled samples summed under their name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def _wait(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Replica:
    """One `refserver` process; `start()` again after a kill brings it back on the same port."""

    port: int
    core: int | None
    args: list[str]
    log_dir: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        cmd = [sys.executable, "-m", "refserver", "--port", str(self.port), "-t", "1", "--metrics",
               "--metrics-compat", "vllm", *self.args]
        if self.core is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(self.core), *cmd]
        return cmd

    def start(self) -> Replica:
        self.starts += 1
        log = open(self.log_dir / f"replica-{self.port}-{self.starts}.log", "wb")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        log.close()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"replica on port {self.port} exited ({self.proc.returncode}); see its log")
            try:
                return requests.get(f"{self.url}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        _wait(ready, timeout, f"replica {self.port} /health")

    def warm_up(self) -> None:
        """First answers of a fresh process are slow; smg's model discovery, which reads
        /v1/models as it registers a worker, can then miss the model."""
        requests.get(f"{self.url}/v1/models", timeout=30)
        requests.post(f"{self.url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout) if self.proc is not None else 0

    def metrics(self) -> dict[str, float]:
        return parse_metrics(requests.get(f"{self.url}/metrics", timeout=5).text)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"replica-{self.port}-*.log")))


@dataclass
class Gateway:
    """One `smg launch` process in front of the replicas."""

    binary: str
    policy: str
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self, worker_urls: list[str]) -> list[str]:
        return [self.binary, "launch", "--host", "127.0.0.1", "--port", str(self.port),
                "--worker-urls", *worker_urls, "--policy", self.policy,
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(self.prometheus_port),
                "--log-level", "warn", *self.extra]

    def start(self, worker_urls: list[str], model: str, log_dir: Path, timeout: float = 60) -> Gateway:
        log = open(log_dir / f"smg-{self.policy}-{self.port}.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.argv(worker_urls), stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def registered() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smg exited ({self.proc.returncode}); see {log.name}")
            workers = self.workers()
            return len(workers) == len(worker_urls) and all(w.get("is_healthy") for w in workers)
        _wait(registered, timeout, "smg to register every worker", 0.25)
        wrong = [w["url"] for w in self.workers() if w.get("model_id") != model]
        if wrong:  # smg's model discovery can miss a worker; it would never get `model` traffic
            self.stop()
            raise RuntimeError(f"smg registered {wrong} without model {model!r}; start it again")
        return self

    def workers(self) -> list[dict]:
        try:
            return requests.get(f"{self.url}/workers", timeout=2).json().get("workers", [])
        except (requests.RequestException, ValueError):
            return []

    def healthy(self) -> dict[str, bool]:
        return {w["url"]: bool(w.get("is_healthy")) for w in self.workers()}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """Replicas started together, pinned round-robin over the cores."""

    def __init__(self, n: int, args: list[str], log_dir: Path | None = None):
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="refserver-fleet-"))
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.replicas = [Replica(free_port(), cores[i % len(cores)] if cores else None, args, self.log_dir)
                         for i in range(n)]

    def __enter__(self):
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_ready()
            r.warm_up()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for r in self.replicas:
            r.signal(signal.SIGKILL)
            if r.proc is not None:
                r.proc.wait()

    def restart(self) -> None:
        """Fresh processes on the same ports: empty prompt caches, same pinning."""
        self.stop()
        self.__enter__()

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def model(self) -> str:
        return requests.get(f"{self.replicas[0].url}/v1/models", timeout=5).json()["data"][0]["id"]

    def metrics(self) -> list[dict[str, float]]:
        return [r.metrics() for r in self.replicas]


def start_gateway(binary: str, policy: str, fleet: Fleet, model: str, extra: list[str] | None = None,
                  attempts: int = 6) -> Gateway:
    """smg in front of the fleet, started again if its discovery missed a worker's model."""
    for attempt in range(attempts):
        try:
            return Gateway(binary, policy, list(extra or [])).start(fleet.urls, model, fleet.log_dir)
        except RuntimeError as exc:
            if attempt == attempts - 1 or "without model" not in str(exc):
                raise
            print(f"  {exc}", flush=True)
    raise AssertionError("unreachable")


def smg_binary(given: str | None) -> str:
    found = given or shutil.which("smg")
    if not found:
        raise SystemExit("smg not found: pip install smg (e.g. into a venv) and pass --smg PATH/TO/smg")
    return found
