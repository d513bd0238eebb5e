"""The test harness: start a server as a real subprocess and talk to it over HTTP.

`ServerProcess` holds one attribute per server flag; `start()` turns the attributes that
are set into argv through `FLAGS` (one row per flag, no if-chain), launches the server on
a free port, and waits for `/health`.  The same harness drives another server:

- `--server-bin PATH` / `REFSERVER_SERVER_BIN`: launch another binary that takes
  llama-server's flags (e.g. llama.cpp's `llama-server`); refserver-only flags then skip
  the test that needs them.
- `--server-url URL` / `REFSERVER_SERVER_URL`: start nothing; every `ServerProcess`
  points at URL.  Tests that need particular flags are marked `needs_flags` and skipped.

`REFSERVER_TEST_MODEL` / `REFSERVER_TEST_DRAFT` replace the embedded models in presets
(e.g. a GGUF for llama-server); golden tests are skipped then.

Request helpers never raise on HTTP errors (`make_request` returns a `ServerResponse`);
streams raise `ServerError` for a non-200 status, before the first event.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from discovery import Discovery, capability_of

from refserver.procs import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("REFSERVER_SHARED", REPO_ROOT.parent / "shared"))
# OpenAI routes whose body requires `model`
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings")
STORIES260K_DIR = SHARED_DIR / "models" / "stories260K"

DEFAULT_TIMEOUT = 120.0  # seconds for one request; streams: per read and in total


# --------------------------------------------------------------------------- target
@dataclass
class Target:
    """What the suite is pointed at; set once by conftest from the command line."""

    server_url: str | None = None
    server_bin: str | None = None
    model: str | None = None  # replaces the embedded chat model in presets
    model_draft: str | None = None
    # what an external target offers (None: the harness starts the server, it offers all)
    discovery: Discovery | None = None
    # the test after which an external target stopped answering (the rest are not run)
    dead_after: str | None = None
    # the profile of the test running now (set by conftest): helpers assert per layer
    profile: str = "refserver"

    @property
    def is_refserver(self) -> bool:
        """True when the suite starts refserver itself with its own embedded models:
        only then do golden values (exact texts, exact token counts) apply."""
        return not (self.server_url or self.server_bin or self.model)

    def require(self, capability: str) -> None:
        """Skip the running test when an external target lacks `capability` (a
        discovery name such as "props", "slots", "metrics", "responses")."""
        if self.discovery is not None and not self.discovery.offers(capability):
            pytest.skip(f"the target lacks {capability}: {self.discovery.why_absent(capability)}")

    def offers(self, capability: str) -> bool:
        return self.discovery is None or self.discovery.offers(capability)

    def layer_absent(self, layer: str) -> str | None:
        """Why the target lacks `layer` (a profile), None when it offers it.  A binary the
        harness starts (`--server-bin`) offers the OpenAI and llama.cpp layers but is not
        refserver, whose own choices it need not share."""
        if self.discovery is not None:
            return self.discovery.layer_absent(layer)
        if layer == "refserver" and not self.runs_refserver:
            return f"the target does not offer the refserver layer (--server-bin {self.server_bin})"
        return None

    @property
    def starts_servers(self) -> bool:
        return self.server_url is None

    @property
    def runs_refserver(self) -> bool:
        """True when the server under test is certainly refserver (started by the suite with
        any model, or an external target whose `Server` header says so): only then are
        refserver's extensions beyond the contract checked."""
        if self.server_url:
            return self.discovery is not None and self.discovery.offers("refserver")
        return not self.server_bin


TARGET = Target(
    server_url=os.environ.get("REFSERVER_SERVER_URL") or None,
    server_bin=os.environ.get("REFSERVER_SERVER_BIN") or None,
    model=os.environ.get("REFSERVER_TEST_MODEL") or None,
    model_draft=os.environ.get("REFSERVER_TEST_DRAFT") or None,
)

# Bodies of /props and /v1/models of the first server that came up (conformance report).
IDENTITY: dict[str, Any] = {}


# --------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class Flag:
    """One server flag.

    kind: "value" → `flag VALUE` when the attribute is not None (a list repeats it);
          "switch" → `flag` when the attribute is true;
          "toggle" → `flag[0]` when true, `flag[1]` when false, nothing when None.
    refserver_only: a flag llama-server does not have; another binary cannot honour it.
    renamed: llama-server's newer name for the flag (e.g. `--draft-max` became
        `--spec-draft-n-max`); another binary gets it when its `--help` lists it.
    if_listed: another binary gets the flag only when its `--help` lists it (a flag that
        older llama-servers lack and whose absence they do not mind, e.g. `--kv-unified`).
    """

    attr: str
    flag: str | tuple[str, str]
    kind: str = "value"
    refserver_only: bool = False
    renamed: str | None = None
    if_listed: bool = False


FLAGS: tuple[Flag, ...] = (
    Flag("host", "--host"),
    Flag("port", "--port"),
    Flag("model", "--model"),
    Flag("model_draft", "--model-draft"),
    Flag("draft_max", "--draft-max", renamed="--spec-draft-n-max"),
    Flag("draft_min", "--draft-min", renamed="--spec-draft-n-min"),
    Flag("n_ctx", "--ctx-size"),
    Flag("n_slots", "--parallel"),
    Flag("kv_unified", ("--kv-unified", "--no-kv-unified"), "toggle", if_listed=True),
    Flag("n_batch", "--batch-size"),
    Flag("n_predict", "--n-predict"),
    Flag("temperature", "--temp"),
    Flag("seed", "--seed"),
    Flag("threads", "--threads"),
    Flag("server_slots", ("--slots", "--no-slots"), "toggle"),
    Flag("jinja", ("--jinja", "--no-jinja"), "toggle"),
    Flag("chat_template", "--chat-template"),
    Flag("chat_template_file", "--chat-template-file"),
    Flag("alias", "--alias"),
    Flag("api_key", "--api-key"),
    Flag("server_metrics", "--metrics", "switch"),
    Flag("metrics_compat", "--metrics-compat", refserver_only=True),
    Flag("verbose", "--verbose", "switch"),
    Flag("cache_ram", "--cache-ram"),
    Flag("cors_origins", "--cors-origins"),
    Flag("context_shift", ("--context-shift", "--no-context-shift"), "toggle"),
    Flag("backend", "--backend", refserver_only=True),
    Flag("strict", "--strict", "switch", refserver_only=True),
    Flag("keepalive", "--sse-keepalive", refserver_only=True),
    Flag("stream_interval_ms", "--stream-interval-ms", refserver_only=True),
    Flag("prompt_cache_size", "--prompt-cache-size", refserver_only=True),
    Flag("max_body_mb", "--max-body-mb", refserver_only=True),
    Flag("max_queue", "--max-queue", refserver_only=True),
    Flag("shutdown_grace", "--shutdown-grace", refserver_only=True),
    Flag("reasoning_format", "--reasoning-format"),
    Flag("reasoning", "--reasoning"),
    Flag("reasoning_budget", "--reasoning-budget"),
    Flag("responses_store_size", "--responses-store-size", refserver_only=True),
)


def flag_args(flag: Flag, value: Any, help_text: str | None = None) -> list[str]:
    """argv fragment for one flag and its attribute value; `help_text` is another
    binary's `--help` (it decides between a flag's old and new name)."""
    if flag.kind == "toggle":
        if value is None:
            return []
        name = flag.flag[0] if value else flag.flag[1]
        if flag.if_listed and help_text and not re.search(rf"(^|[\s,]){re.escape(name)}\b", help_text):
            return []
        return [name]
    if flag.kind == "switch":
        return [flag.flag] if value else []
    if value is None:
        return []
    name = flag.flag
    if help_text and flag.renamed and re.search(rf"(^|[\s,]){re.escape(flag.renamed)}\b", help_text):
        name = flag.renamed
    values = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for v in values:
        out += [name, str(v)]
    return out


_HELP_TEXT: dict[str, str] = {}


def binary_help(binary: str) -> str:
    """`binary --help` (stdout + stderr), cached; "" when it cannot be run."""
    if binary not in _HELP_TEXT:
        try:
            done = subprocess.run([binary, "--help"], capture_output=True, timeout=60, check=False)
            _HELP_TEXT[binary] = (done.stdout + done.stderr).decode("utf-8", "replace")
        except (OSError, subprocess.TimeoutExpired):
            _HELP_TEXT[binary] = ""
    return _HELP_TEXT[binary]


# --------------------------------------------------------------------------- responses
@dataclass
class ServerResponse:
    status_code: int
    headers: Any
    body: Any  # parsed JSON, else text (None for an empty body)


class ServerError(Exception):
    """A stream request answered with a non-200 status."""

    def __init__(self, status_code: int, body: Any):
        super().__init__(f"HTTP {status_code}: {body}")
        self.status_code = status_code
        self.body = body


@dataclass(frozen=True)
class SSEComment:
    """An SSE comment line (`: ...`), e.g. a keepalive; `text` is what follows the colon."""

    text: str
    t: float


def _parse_body(resp: requests.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text


class EventStream:
    """An SSE response.  Iterating yields each `data:` event parsed as JSON (and
    `SSEComment`s too when `comments=True`); it stops at `data: [DONE]` or at the end of
    the stream.  Afterwards `done` tells whether `[DONE]` came, `comments` holds every
    comment line, `items` every (kind, value, time) in order.  Reads time out after
    `timeout` seconds of silence or in total."""

    def __init__(self, resp: requests.Response, timeout: float, comments: bool):
        self.resp = resp
        self.status_code = resp.status_code
        self.headers = resp.headers
        self.timeout = timeout
        self.yield_comments = comments
        self.comments: list[SSEComment] = []
        self.events: list[Any] = []
        self.items: list[tuple[str, Any, float]] = []
        self.done = False
        self.started = time.monotonic()
        self._iter = self._read()

    def __iter__(self):
        return self._iter

    def __next__(self):
        return next(self._iter)

    def close(self) -> None:
        self.resp.close()

    def read_all(self) -> list[Any]:
        for _ in self:
            pass
        return self.events

    def _lines(self) -> Iterator[bytes]:
        buf = b""
        deadline = self.started + self.timeout
        for chunk in self.resp.iter_content(chunk_size=None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream still open after {self.timeout} s")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.rstrip(b"\r")
        if buf:
            yield buf

    def _read(self) -> Iterator[Any]:
        data: list[str] = []
        try:
            for raw in self._lines():
                line = raw.decode("utf-8")
                now = time.monotonic()
                if line == "":
                    if data:
                        payload = "\n".join(data)
                        data = []
                        if payload.strip() == "[DONE]":
                            self.done = True
                            self.items.append(("done", None, now))
                            return
                        event = json.loads(payload)
                        self.events.append(event)
                        self.items.append(("data", event, now))
                        yield event
                    continue
                if line.startswith(":"):
                    comment = SSEComment(line[1:].strip(), now)
                    self.comments.append(comment)
                    self.items.append(("comment", comment, now))
                    if self.yield_comments:
                        yield comment
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                # other fields (event:, id:, retry:) are not used by these servers
            if data:  # a last event without its blank line
                payload = "\n".join(data)
                if payload.strip() == "[DONE]":
                    self.done = True
                else:
                    event = json.loads(payload)
                    self.events.append(event)
                    yield event
        finally:
            self.resp.close()


# --------------------------------------------------------------------------- server
_RUNNING: set[ServerProcess] = set()
_RUNNING_LOCK = threading.Lock()


def running_servers() -> set[ServerProcess]:
    with _RUNNING_LOCK:
        return set(_RUNNING)


class ServerProcess:
    """A server under test.  Set attributes (None = flag not given), then `start()`."""

    # defaults, as class attributes a test may override on an instance
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port is picked at start()
    model: str | None = None  # None: refserver's embedded model
    model_draft: str | None = None
    draft_max: int | None = None
    draft_min: int | None = None
    n_ctx: int | None = None
    n_slots: int | None = None
    kv_unified: bool | None = None
    n_batch: int | None = None
    n_predict: int | None = None
    temperature: float | None = 0.8
    seed: int | None = 42
    threads: int | None = None
    server_slots: bool | None = True
    jinja: bool | None = None
    chat_template: str | None = None
    chat_template_file: str | None = None
    alias: str | None = None
    api_key: str | list[str] | None = None
    server_metrics: bool = False
    metrics_compat: str | None = None
    verbose: bool = False
    cache_ram: int | None = None
    cors_origins: str | None = None
    context_shift: bool | None = None
    backend: str | None = None
    strict: bool = False
    keepalive: float | None = None
    stream_interval_ms: float | None = None
    prompt_cache_size: int | None = None
    max_body_mb: float | None = None
    max_queue: int | None = None
    shutdown_grace: float | None = None
    reasoning_format: str | None = None
    reasoning: str | None = None
    reasoning_budget: int | None = None
    responses_store_size: int | None = None
    # True: owned by a module/session fixture, not stopped at the end of each test
    persistent: bool = False
    # extra environment variables for the started process (e.g. REFSERVER_NOW)
    env: dict[str, str] | None = None
    # argv appended after the flags (a test of the command line itself, e.g. llama-server habits)
    extra_args: tuple[str, ...] = ()

    def __init__(self, **attrs):
        for name, value in attrs.items():
            if not any(f.attr == name for f in FLAGS):
                raise AttributeError(f"ServerProcess has no flag attribute {name!r}")
            setattr(self, name, value)
        self.process: subprocess.Popen | None = None
        self.base_url: str | None = None
        self._stderr_file = None
        self._stdout_file = None
        self.external = False
        self._model_id: str | None = None  # /v1/models' first id, read once per start

    # ------------------------------------------------------------------ argv
    def binary(self) -> list[str]:
        if TARGET.server_bin:
            return [TARGET.server_bin]
        return [sys.executable, "-m", "refserver"]

    def refserver_only_flags_set(self) -> list[str]:
        return [f.attr for f in FLAGS if f.refserver_only and flag_args(f, getattr(self, f.attr))]

    def args(self) -> list[str]:
        argv = self.binary()
        help_text = binary_help(TARGET.server_bin) if TARGET.server_bin else None
        for f in FLAGS:
            argv += flag_args(f, getattr(self, f.attr), help_text)
        argv += list(self.extra_args)
        if self.model_draft and help_text and re.search(r"(^|\s)--spec-type\b", help_text):
            # newer llama-server loads -md but drafts only with a speculative type (default none)
            argv += ["--spec-type", "draft-simple"]
        return argv

    # ------------------------------------------------------------------ life cycle
    @property
    def url(self) -> str:
        if self.base_url is None:
            raise RuntimeError("server not started")
        return self.base_url

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self._model_id = None
        if TARGET.server_url:
            self._attach(TARGET.server_url, timeout)
            return self
        if TARGET.server_bin and self.refserver_only_flags_set():
            import pytest

            pytest.skip(f"{TARGET.server_bin} cannot take refserver-only flags: "
                        f"{', '.join(self.refserver_only_flags_set())}")
        if self.process is not None:
            raise RuntimeError("server already started")
        self.port = free_port(self.host)
        self.base_url = f"http://{self.host}:{self.port}"
        argv = self.args()
        self._stdout_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the process
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the process
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env or {})
        self.process = subprocess.Popen(argv, stdout=self._stdout_file, stderr=self._stderr_file,
                                        env=env, cwd=str(REPO_ROOT))
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                err = self.stderr_tail()
                self._cleanup()
                raise RuntimeError(f"server exited with code {code} during start-up\n"
                                   f"argv: {' '.join(argv)}\nstderr:\n{err}")
            if self._healthy():
                break
            if time.monotonic() > deadline:
                err = self.stderr_tail()
                self.stop()
                raise TimeoutError(f"server not healthy after {timeout} s\nargv: {' '.join(argv)}\n"
                                   f"stderr:\n{err}")
            time.sleep(0.05)
        self._record_identity()
        return self

    def _attach(self, url: str, timeout: float) -> None:
        self.external = True
        self.base_url = url.rstrip("/")
        parsed = urlparse(self.base_url)
        self.host, self.port = parsed.hostname, parsed.port
        if not wait_until(self._healthy, timeout, interval=0.1):
            raise TimeoutError(f"{self.base_url}/health not 200 after {timeout} s")
        self._record_identity()

    def _healthy(self) -> bool:
        """One GET /health: whether it answered 200."""
        try:
            r = requests.get(f"{self.base_url}/health", headers=self._auth_headers(), timeout=2)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def _record_identity(self) -> None:
        if IDENTITY:
            return
        for key, path in (("props", "/props"), ("models", "/v1/models")):
            try:
                IDENTITY[key] = self.make_request("GET", path, timeout=10).body
            except requests.RequestException as exc:
                IDENTITY[key] = f"unavailable: {exc}"
        IDENTITY["target"] = self.base_url if self.external else " ".join(self.args())

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """terminate → wait 5 s → kill; only our own child process."""
        if self.process is not None:
            stop_process(self.process)
        self._cleanup()

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def _cleanup(self) -> None:
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        self.process = None

    def stderr_tail(self, n: int = 4000) -> str:
        f = self._stderr_file
        if f is None:
            return ""
        f.seek(0)
        return f.read().decode("utf-8", "replace")[-n:]

    # ------------------------------------------------------------------ requests
    def _require_route(self, path: str) -> None:
        cap = capability_of(path)
        if cap is not None and self.external:
            TARGET.require(cap)

    def _auth_headers(self) -> dict[str, str]:
        key = self.api_key
        if isinstance(key, (list, tuple)):
            key = key[0] if key else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _headers(self, headers: dict | None) -> dict:
        out = self._auth_headers()
        out.update(headers or {})
        return out

    def make_request(self, method: str, path: str, data: Any = None, headers: dict | None = None,
                     timeout: float = DEFAULT_TIMEOUT, raw: bytes | str | None = None) -> ServerResponse:
        """One request; `data` is sent as JSON, `raw` as the body verbatim.  HTTP errors are
        returned, never raised.  A route the target lacks skips the test (see discovery.py)."""
        self._require_route(path)
        data = self._openai_body(path, data)
        kwargs: dict[str, Any] = {"headers": self._headers(headers), "timeout": timeout}
        if raw is not None:
            kwargs["data"] = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
            kwargs["headers"].setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["json"] = data
        resp = requests.request(method, f"{self.url}{path}", **kwargs)
        body = None if method.upper() in ("OPTIONS", "HEAD") else _parse_body(resp)
        return ServerResponse(resp.status_code, resp.headers, body)

    def make_stream_request(self, method: str, path: str, data: Any = None, headers: dict | None = None,
                            timeout: float = DEFAULT_TIMEOUT, comments: bool = False) -> EventStream:
        """A streamed request: raises `ServerError` at once on a non-200 status; iterate the
        result for the `data:` events (comments collected on `.comments`)."""
        self._require_route(path)
        data = self._openai_body(path, data)
        resp = requests.request(method, f"{self.url}{path}", json=data, headers=self._headers(headers),
                                timeout=(10, timeout), stream=True)
        if resp.status_code != 200:
            body = _parse_body(resp)
            resp.close()
            raise ServerError(resp.status_code, body)
        return EventStream(resp, timeout, comments)

    def make_any_request(self, method: str, path: str, data: dict, headers: dict | None = None,
                         timeout: float = DEFAULT_TIMEOUT) -> dict:
        """A chat request, streamed or not as `data["stream"]` says; a stream is assembled
        into the non-stream shape while checking the streaming rules (CONTRACT §5)."""
        if not data.get("stream"):
            res = self.make_request(method, path, data, headers, timeout)
            if res.status_code != 200:
                raise ServerError(res.status_code, res.body)
            return res.body
        return assemble_chat_stream(self.make_stream_request(method, path, data, headers, timeout))

    def hold_slot(self) -> EventStream:
        """Occupy one slot until the returned stream is closed, however fast the machine:
        an endless generation (`n_predict` -1, EOS ignored) on a server started with
        `context_shift`, which shifts its context instead of ending.  Returns once the
        first token arrived, so the slot is busy."""
        if not self.context_shift:
            raise RuntimeError("hold_slot needs a server started with context_shift=True")
        stream = self.make_stream_request("POST", "/completion", {
            "prompt": "Once upon a time", "n_predict": -1, "ignore_eos": True, "stream": True})
        next(iter(stream))
        return stream

    # ------------------------------------------------------------------ conveniences
    def get(self, path: str, **kw) -> ServerResponse:
        return self.make_request("GET", path, **kw)

    def post(self, path: str, data: Any = None, **kw) -> ServerResponse:
        return self.make_request("POST", path, data, **kw)

    def ok(self, path: str, data: Any = None) -> Any:
        """POST (or GET when data is None) expecting 200; returns the body."""
        res = self.post(path, data) if data is not None else self.get(path)
        assert res.status_code == 200, f"{path}: HTTP {res.status_code}: {res.body}"
        return res.body

    def tokenize(self, content: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.ok("/tokenize", {"content": content, "add_special": add_special,
                                     "parse_special": parse_special})["tokens"]

    def props(self) -> dict:
        return self.ok("/props")

    def model_id(self) -> str:
        """The first model id `/v1/models` lists (what an OpenAI client sends as `model`)."""
        if self._model_id is None:
            self._model_id = self.ok("/v1/models")["data"][0]["id"]
        return self._model_id

    def _openai_body(self, path: str, data: Any) -> Any:
        """In the openai profile a body is what an OpenAI client sends, and OpenAI requires
        `model` (it answers 400 without one): a test that leaves it out sends the target's id."""
        if TARGET.profile == "openai" and path in MODEL_ROUTES and isinstance(data, dict) and "model" not in data:
            return {**data, "model": self.model_id()}
        return data

    def offered(self, paths: list[str]) -> list[str]:
        """The paths of `paths` the target offers: loops over routes use it so that a route
        the target lacks is left out rather than ending the test at the first one."""
        return [p for p in paths if not self.external or TARGET.offers(capability_of(p) or "")]

    def slots(self) -> list[dict]:
        return self.ok("/slots")

    def metrics(self) -> dict[str, float]:
        return parse_prometheus(self.ok("/metrics"))

    def require_slots(self, n: int) -> None:
        """Skip the test on an external server (`--server-url`) with fewer than `n` slots:
        it was started with other flags than the preset's.  A server the harness started
        itself must have them (its preset sets `-np`), so there a shortfall fails."""
        total = self.props().get("total_slots", 0)
        if total < n and self.external:
            pytest.skip(f"needs a server with at least {n} slots (start it with -np {n}); this one has {total}")
        assert total >= n, f"the preset asked for at least {n} slots; /props reports {total}"

    def generation_cap(self) -> int:
        """The most tokens a request may generate when it asks for more: the slot's context
        size (from /props).  The server's `--n-predict` is only the default of requests that
        give none (llama.cpp's current behaviour), so it does not bound this."""
        return int(self.props()["default_generation_settings"]["n_ctx"])

    def wait_slots_idle(self, timeout: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not any(s.get("is_processing") for s in self.slots()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"<ServerProcess {self.base_url or 'not started'}>"


# --------------------------------------------------------------------------- presets
def small_model() -> str | None:
    """The model for suites that want a fast server: the one under test when given, else
    stories260K when ../shared has it, else None (the embedded chat model)."""
    if TARGET.model:
        return TARGET.model
    if STORIES260K_DIR.is_dir():
        return str(STORIES260K_DIR / "onnx-genai")
    return None


class ServerPreset:
    """Named server configurations, like llama.cpp's `ServerPreset.tinyllama2()`."""

    @staticmethod
    def chat() -> ServerProcess:
        """The embedded chat model: alias refserver-chat, 2 slots sharing 1024 tokens of
        context (unified KV, which llama-server uses with an explicit -np only when told), batch 32."""
        return ServerProcess(
            model=TARGET.model, alias="refserver-chat", n_ctx=1024, n_slots=2, kv_unified=True, n_batch=32,
            n_predict=64, seed=42, temperature=0.8, jinja=True)

    @staticmethod
    def chat_with_draft() -> ServerProcess:
        server = ServerPreset.chat()
        server.model_draft = TARGET.model_draft or (TARGET.model if TARGET.model else
                                                    str(REPO_ROOT / "refserver" / "models" / "draft"))
        server.draft_max = 8
        server.draft_min = 0
        return server

    @staticmethod
    def one_slot() -> ServerProcess:
        server = ServerPreset.chat()
        server.n_slots = 1
        server.n_ctx = 512
        return server

    @staticmethod
    def long_context() -> ServerProcess:
        server = ServerPreset.chat()
        server.n_ctx = 2048  # the embedded model's n_ctx_train
        server.n_slots = 1
        return server

    @staticmethod
    def stories260k(layout: str = "genai") -> ServerProcess:
        """llama.cpp's own test model (tinyllama2 preset) in one of its ONNX layouts."""
        return ServerProcess(
            model=str(STORIES260K_DIR / f"onnx-{layout}"), alias="tinyllama-2", n_ctx=512, n_batch=32,
            n_slots=2, n_predict=64, seed=42, temperature=0.8, jinja=False)


# --------------------------------------------------------------------------- helpers
def match_regex(regex: str, text: str) -> bool:
    return re.search(regex, text, flags=re.IGNORECASE | re.MULTILINE | re.DOTALL) is not None


def parallel_function_calls(calls: list[tuple[Callable, tuple]], max_workers: int | None = None) -> list:
    """Run `(func, args)` pairs in threads; results in order; the first exception (in
    call order) is re-raised."""
    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=max_workers or len(calls)) as pool:
        futures = [pool.submit(func, *args) for func, args in calls]
        return [f.result() for f in futures]


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels} value` lines → {name{labels}: value}; also {name: value} summed over
    labels (histogram buckets are kept under their own names)."""
    out: dict[str, float] = {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        out[key] = v
        base = key.split("{", 1)[0]
        if "{" in key:
            sums[base] = sums.get(base, 0.0) + v
    for base, v in sums.items():
        out.setdefault(base, v)
    return out


def metric(metrics: dict[str, float], name: str, default: float | None = None) -> float | None:
    """A Prometheus metric by its name without namespace (`prompt_tokens_total` matches
    `llamacpp:prompt_tokens_total` and `refserver:prompt_tokens_total`)."""
    for key, value in metrics.items():
        if key == name or key.endswith(":" + name):
            return value
    return default


def client_error_status_ok(status: int) -> bool:
    """The status of an answer to a malformed request (bad JSON, wrong types, hostile
    bytes).  refserver answers every client mistake with a 4xx; CONTRACT §6 lets other
    servers answer bad JSON and type errors with 500 (llama.cpp does), provided the
    error envelope comes back and the server stays up: checked by the caller."""
    return status < 500 or (status == 500 and not TARGET.runs_refserver)


def error_of(res: ServerResponse | ServerError) -> dict:
    """The `error` object of an error envelope; asserts the envelope's shape."""
    body = res.body
    status = res.status_code
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), \
        f"HTTP {status}: no error envelope: {body!r}"
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], f"error without message: {err}"
    assert isinstance(err.get("type"), str), f"error without type: {err}"
    check_error_code(err, status)
    return err


def check_error_code(err: dict, status: int) -> None:
    """OpenAI documents `code` as a string or null; llama.cpp and refserver send the HTTP
    status.  An `openai`-profile test accepts any of these; the other layers need the status."""
    code = err.get("code")
    if TARGET.profile == "openai":
        assert code is None or isinstance(code, (str, int)), f"error code {code!r} is not a string or null"
    else:
        assert code == status, f"error code {code!r} != HTTP status {status}"


def response_error(res: requests.Response, where: str = "") -> dict:
    """The `error` object of a plain `requests` answer; fails unless the body is JSON with
    the whole envelope: code == HTTP status, a non-empty message and a non-empty type."""
    prefix = f"{where} -> " if where else ""
    try:
        doc = res.json()
    except ValueError:
        pytest.fail(f"{prefix}HTTP {res.status_code}: not JSON: {res.text[:200]!r}")
    err = doc.get("error") if isinstance(doc, dict) else None
    assert isinstance(err, dict), f"{prefix}HTTP {res.status_code}: no error envelope: {doc!r}"
    check_error_code(err, res.status_code)
    assert isinstance(err.get("message"), str) and err["message"], f"{prefix}{doc!r}"
    assert isinstance(err.get("type"), str) and err["type"], f"{prefix}{doc!r}"
    return err


def assemble_chat_stream(stream: EventStream) -> dict:
    """Assemble a chat stream into the non-stream shape, asserting the streaming rules:
    the first delta of a choice has role "assistant"; later ones have no role and content
    deltas are non-empty (llama.cpp's and refserver's rule; the `openai` profile allows a
    repeated role and empty deltas, which OpenAI's chunk object does not exclude); a tool call's first delta has id, type "function" and a name;
    one id for the whole stream; chunks with empty `choices` carry `usage`; `[DONE]` ends."""
    choices: dict[int, dict] = {}
    ids: set[str] = set()
    out: dict[str, Any] = {}
    for chunk in stream:
        assert "error" not in chunk, f"error event in stream: {chunk}"
        assert chunk.get("object") == "chat.completion.chunk", chunk
        ids.add(chunk["id"])
        out.setdefault("model", chunk.get("model"))
        out.setdefault("created", chunk.get("created"))
        out.setdefault("system_fingerprint", chunk.get("system_fingerprint"))
        if "timings" in chunk:
            out["timings"] = chunk["timings"]
        if not chunk["choices"]:
            assert chunk.get("usage"), f"chunk without choices and usage: {chunk}"
            out["usage"] = chunk["usage"]
            continue
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
        for ch in chunk["choices"]:
            idx = ch.get("index", 0)
            first = idx not in choices
            state = choices.setdefault(idx, {"index": idx, "message": {"role": None, "content": None},
                                             "finish_reason": None, "_calls": {}})
            delta = ch.get("delta") or {}
            if first:
                assert delta.get("role") == "assistant", f"first delta without role assistant: {delta}"
                state["message"]["role"] = "assistant"
            elif TARGET.profile == "openai":  # OpenAI's chunk object lets any delta carry the role
                assert delta.get("role") in (None, "assistant"), f"a later delta with another role: {delta}"
            else:
                assert "role" not in delta, f"role repeated in a later delta: {delta}"
            content = delta.get("content")
            if content is not None and not first and TARGET.profile != "openai":
                assert content != "", "empty content delta"
            if content:
                state["message"]["content"] = (state["message"]["content"] or "") + content
            if delta.get("reasoning_content"):
                msg = state["message"]
                msg["reasoning_content"] = msg.get("reasoning_content", "") + delta["reasoning_content"]
            for tc in delta.get("tool_calls") or []:
                calls = state["_calls"]
                i = tc.get("index", len(calls))
                if i not in calls:
                    assert tc.get("id"), f"first delta of a tool call without id: {tc}"
                    assert tc.get("type") == "function", f"first tool-call delta without type: {tc}"
                    assert tc.get("function", {}).get("name"), f"first tool-call delta without name: {tc}"
                    calls[i] = {"id": tc["id"], "type": "function",
                                "function": {"name": tc["function"]["name"], "arguments": ""}}
                calls[i]["function"]["arguments"] += tc.get("function", {}).get("arguments") or ""
            if ch.get("logprobs") and ch["logprobs"].get("content"):
                state.setdefault("logprobs", {"content": []})["content"] += ch["logprobs"]["content"]
            if ch.get("finish_reason"):
                assert state["finish_reason"] is None, "finish_reason sent twice"
                state["finish_reason"] = ch["finish_reason"]
    assert stream.done, "stream ended without data: [DONE]"
    assert len(ids) == 1, f"several ids in one stream: {ids}"
    out["id"] = ids.pop()
    out["object"] = "chat.completion"
    out["choices"] = []
    for idx in sorted(choices):
        state = choices[idx]
        calls = state.pop("_calls")
        if calls:
            state["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
        out["choices"].append(state)
    return out


def chat_outcome(server: ServerProcess, body: dict) -> tuple[str | None, str | None, list[tuple[str, str]], str]:
    """(reasoning_content, content, [(name, arguments)], finish_reason) of a chat answer,
    asserting that the same request streamed assembles to the same."""
    def outcome(choice: dict) -> tuple:
        msg = choice["message"]
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or ()]
        return msg.get("reasoning_content") or None, msg.get("content") or None, calls, choice["finish_reason"]

    got = outcome(server.ok("/v1/chat/completions", body)["choices"][0])
    stream = server.make_stream_request("POST", "/v1/chat/completions", {**body, "stream": True})
    assert outcome(assemble_chat_stream(stream)["choices"][0]) == got
    return got


def target_answers(url: str, tries: int = 2) -> bool:
    """Whether an external target still serves a one-token completion (a `/health` that
    answers says little: mlx-lm's HTTP thread outlives its generation thread)."""
    for _ in range(tries):
        try:
            r = requests.post(f"{url.rstrip('/')}/v1/completions", json={"prompt": "a", "max_tokens": 1},
                              timeout=30)
        except requests.RequestException:
            continue
        if r.status_code < 500:
            return True
    return False


def deferred_requests(server: ServerProcess) -> float:
    """Requests waiting for a slot (`/metrics`), whatever prefix the server puts on the name."""
    return max((v for k, v in server.metrics().items() if k.endswith(":requests_deferred")), default=0)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}

TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
