"""refserver as a subprocess on a free loopback port; always stopped by its own pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from refserver.procs import free_port, proc_status, stop_process

ROOT = Path(__file__).resolve().parent.parent


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of a process, by thread id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


class Server:
    """`python -m refserver -m MODEL --port P ARGS...`; use as a context manager."""

    def __init__(self, model: str | Path, args: list[str], python: str = sys.executable,
                 startup_timeout: float = 120.0, wrap: list[str] | None = None):
        self.model = str(model)
        self.args = list(args)
        self.python = python
        self.startup_timeout = startup_timeout
        self.wrap = wrap or []  # e.g. py-spy record ... --
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def start(self) -> Server:
        self.port = free_port()
        cmd = [*self.wrap, *self.command()]
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            "w+", prefix="bench-server-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env())
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} at start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def command(self) -> list[str]:
        """The server's command line (`self.port` is chosen by then)."""
        return [self.python, "-m", "refserver", "-m", self.model, "--port", str(self.port), *self.args]

    def extra_env(self) -> dict[str, str]:
        return {}

    def log_tail(self, n: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-n:]

    def memory_kib(self) -> dict[str, int]:
        """RSS and peak RSS of the server process (the one refserver runs in)."""
        return proc_status(self.server_pid())

    def cpu(self) -> tuple[float, float]:
        """(main thread, whole process) CPU seconds so far.  The main thread runs the
        IOLoop (HTTP, JSON, SSE); the others are the engine thread and ORT's pool."""
        pid = self.server_pid()
        per = thread_cpu(pid)
        return per.get(pid, 0.0), sum(per.values())

    def server_pid(self) -> int:
        """The refserver process: our child, or the wrapper's child when wrapped."""
        if not self.wrap:
            return self.pid
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
            return int(children[0]) if children else self.pid
        except OSError:
            return self.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc, signal.SIGINT if self.wrap else signal.SIGTERM, timeout=15 if self.wrap else 8)
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> Server:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
