"""Start-up and shutdown: listen first, load the model in the background, serve, stop.

`/health` answers 503 "Loading model" until the tokenizer, template, backend and engine
are ready.  SIGTERM/SIGINT: drain - `/health` and new requests answer 503 "Server is
shutting down" while in-flight requests get up to --shutdown-grace seconds - then stop
listening, end the streams still open with an error event, exit 0.
Start-up failures print one line on stderr and exit 1.  Should the engine thread die, the
server cannot serve any more: `/health` answers 503 at once and the process exits 1, so
a supervisor restarts it (`REFSERVER_INJECT_ENGINE_FAULT=1` forces this, for tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .cli import ServerConfig
from .engine.types import SamplingParams
from .errors import RefserverError
from .http.app import make_app
from .http.state import AppState, ModelSummary
from .http.transport import READ_HEADER_BYTES, RefserverHTTPServer
from .model_dir import ModelDir, ModelDirError, check_ctx_size, resolve_model_dir, search_defaults
from .schemas.common import ServerDefaults
from .stream.bridge import EventBridge

log = logging.getLogger("refserver")


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the user sees."""


def _fail(message: str) -> int:
    print(f"refserver: error: {message}", file=sys.stderr, flush=True)
    return 1


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def load(config: ServerConfig, model: ModelDir, state: AppState) -> None:
    """Load tokenizer, chat template, backend(s) and engine into `state` (any thread)."""
    import backends
    from backends.errors import BackendError

    from .chat.templates import resolve_chat_template
    from .engine import Engine, EngineConfig
    from .metrics import Metrics
    from .tokenizer import TextTokenizer

    try:
        tokenizer = TextTokenizer(model.path)
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise StartupError(f"cannot read the tokenizer of {model.path}: {exc}") from exc
    try:
        template = resolve_chat_template(config.chat_template, config.chat_template_file, model.chat_template,
                                         tokenizer.bos_token, tokenizer.eos_token, jinja=config.jinja)
        tool_template = None  # the model's `tool_use` template, for requests with tools
        if "tool_use" in model.chat_templates and config.jinja and not (
                config.chat_template or config.chat_template_file):
            tool_template = resolve_chat_template(None, None, model.chat_templates["tool_use"],
                                                  tokenizer.bos_token, tokenizer.eos_token)
    except RefserverError as exc:
        raise StartupError(f"{exc.message}; fix --chat-template / --chat-template-file") from exc
    try:
        backend = backends.load(model.path, device=config.device, threads=config.threads, filename=model.graph)
        draft = None
        if config.model_draft:
            draft = backends.load(config.model_draft, device=config.device, threads=config.threads_draft)
    except BackendError as exc:
        raise StartupError(str(exc)) from exc
    search = search_defaults(model)
    engine_kwargs = {"n_slots": config.parallel, "n_ctx": config.ctx_size or search.get("max_length", 0),
                     "kv_unified": config.kv_unified,
                     "n_batch": config.batch_size,
                     "n_predict": config.n_predict, "seed": config.seed, "draft_max": config.draft_max,
                     "draft_min": config.draft_min, "draft_p_min": config.draft_p_min,
                     "context_shift": config.context_shift}
    for key, value in (("cache_ram_mib", config.cache_ram), ("prompt_cache_size", config.prompt_cache_size),
                       ("max_queue", config.max_queue)):
        if value is not None:
            engine_kwargs[key] = value
    engine_kwargs["inject_fault"] = os.environ.get("REFSERVER_INJECT_ENGINE_FAULT") == "1"
    try:
        engine = Engine(backend, tokenizer, EngineConfig(**engine_kwargs), draft=draft)
        engine.start()
    except (BackendError, RefserverError, ValueError) as exc:
        raise StartupError(f"cannot start the engine: {exc}") from exc

    info = backend.info
    state.model = ModelSummary(
        alias=model.alias, aliases=config.aliases or [model.alias], tags=config.tags,
        path=str(model.path), n_vocab=info.vocab_size,
        n_ctx_train=info.context_length or model.n_ctx_train,
        n_embd=int(model.config.get("hidden_size", 0) or 0), n_params=info.n_params, size=info.size_bytes)
    state.defaults = server_defaults(config, search, tokenizer.vocab_size, has_draft=draft is not None)
    state.tokenizer, state.template, state.engine = tokenizer, template, engine
    state.tool_template, state.template_names = tool_template, list(model.chat_templates)
    if config.metrics:
        state.metrics = Metrics(engine.stats, model_name=model.alias, compat=config.metrics_compat)


def server_defaults(config: ServerConfig, search: dict, n_vocab: int, has_draft: bool) -> ServerDefaults:
    """What requests fall back to: the flags, else the model's genai_config.json `search`
    values (as onnxruntime-genai would sample it), else llama-server's defaults."""
    model = {k: v for k, v in search.items() if k in ("temperature", "top_k", "top_p")}
    flags = {**({} if config.temp is None else {"temperature": config.temp}), **config.sampling}
    sampling = dataclasses.replace(SamplingParams(), **{**model, **flags})
    return ServerDefaults(
        temperature=sampling.temperature, seed=config.seed, n_predict=config.n_predict, n_slots=config.parallel,
        n_vocab=n_vocab, draft_max=config.draft_max, draft_min=config.draft_min, draft_p_min=config.draft_p_min,
        has_draft=has_draft, sampling=sampling)


def run(config: ServerConfig) -> int:
    try:
        model = resolve_model_dir(config.model, config.alias)
        check_ctx_size(model, config.ctx_size, config.parallel, config.kv_unified)
        if config.model_draft:
            draft = resolve_model_dir(config.model_draft, flag="-md")
            config.model_draft = str(draft.path / draft.graph) if draft.graph else str(draft.path)
        from backends.errors import ProviderUnavailable
        from backends.onnx_runtime import check_device

        check_device(config.device)
    except ModelDirError as exc:
        return _fail(str(exc))
    except ProviderUnavailable as exc:
        return _fail(str(exc))
    _setup_logging(config.verbose)
    if config.inert_flags:
        log.info("llama-server flags with no effect here: %s", " ".join(config.inert_flags))
    return asyncio.run(_serve(config, model))


def _listen(server: HTTPServer, hosts: list[str], port: int) -> list[tuple[str, int]]:
    """Bind every host (`--host a,b`); with port 0 the first picks a free port and the
    others take the same one.  Returns the (host, port) pairs bound."""
    bound: list[tuple[str, int]] = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_UNSPEC
        sockets = bind_sockets(port, host.strip("[]"), family=family)
        server.add_sockets(sockets)
        port = port or sockets[0].getsockname()[1]
        bound.append((host, sockets[0].getsockname()[1]))
    return bound


def _url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def _banner(config: ServerConfig, state: AppState, bound: list[tuple[str, int]]) -> None:
    """What the server serves and how to reach it, logged once it is ready."""
    engine, m = state.engine, state.model
    url = _url(*bound[0])
    sharing = (f"sharing {engine.n_ctx_total} tokens of context" if engine.n_ctx_total < len(engine.slots_) *
               engine.n_ctx_slot else f"of {engine.n_ctx_slot} tokens each")
    endpoints = ("/health /props /v1/models /completion /v1/completions /v1/chat/completions /tokenize "
                 "/detokenize /apply-template" + (" /slots" if config.slots else "")
                 + (" /metrics" if config.metrics else ""))
    body = '{"messages":[{"role":"user","content":"Hello"}]}'
    lines = [
        (f"model {m.path} as {', '.join(m.aliases)} ({m.n_params / 1e6:.1f}M parameters, "
         f"trained context {m.n_ctx_train} tokens)"),
        (f"{len(engine.slots_)} slots, each up to {engine.n_ctx_slot} tokens, {sharing}; "
         f"KV cache {engine.kv_bytes / 2**20:.1f} MiB allocated for them"),
        "listening on " + ", ".join(_url(h, p) for h, p in bound),
        f"chat page {url}/" if config.webui else "chat page off (--no-webui)",
        f"API docs {url}/docs; try: curl {url}/v1/chat/completions -d '{body}'",
        f"endpoints: {endpoints}",
    ]
    if config.api_keys:
        lines.append(f"{len(config.api_keys)} API key(s) required (Authorization: Bearer KEY)")
    log.info("ready:\n  %s", "\n  ".join(lines))


async def _serve(config: ServerConfig, model: ModelDir) -> int:
    loop = asyncio.get_running_loop()
    state = AppState(config, bridge=EventBridge(loop, config.stream_interval_ms / 1000))
    state.model = ModelSummary(alias=model.alias, path=str(model.path))
    app = make_app(state)
    limit = int(config.max_body_mb * 1024 * 1024)
    # Oversized bodies (up to 1 GiB or 64x the limit) are read and dropped, so the client
    # gets a clean 413 rather than a reset connection.
    server = RefserverHTTPServer(app, max_body_size=max(64 * limit, 1 << 30), idle_connection_timeout=300,
                                 body_timeout=config.timeout, max_header_size=READ_HEADER_BYTES)
    try:
        bound = _listen(server, [h.strip() for h in config.host.split(",") if h.strip()], config.port)
    except (OSError, socket.gaierror) as exc:
        return _fail(f"cannot listen on {config.host}:{config.port} ({exc.strerror or exc}); "
                     "pick another --port or --host")
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: exit at once, as llama-server does
            log.warning("second signal: exiting now")
            _exit_now(1)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("listening on %s; loading %s", ", ".join(_url(h, p) for h, p in bound), model.path)

    loaded: asyncio.Future = loop.create_future()

    def load_in_thread() -> None:
        try:
            load(config, model, state)
        except BaseException as exc:  # noqa: BLE001 - reported on the loop
            error = exc
            loop.call_soon_threadsafe(lambda: loaded.done() or loaded.set_exception(error))
        else:
            loop.call_soon_threadsafe(lambda: loaded.done() or loaded.set_result(None))

    # A daemon thread, so a signal during loading can end the process at once.
    threading.Thread(target=load_in_thread, name="refserver-load", daemon=True).start()
    stop_wait = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loaded, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    if not loaded.done():
        # The loading thread may be inside ONNX Runtime: finalizing the interpreter under it
        # aborts the process ("terminate called without an active exception"), so leave now.
        log.info("stopped while loading the model")
        _exit_now(0)
    exc = loaded.exception()
    if exc is not None:
        server.stop()
        if isinstance(exc, StartupError):
            return _fail(str(exc))
        return _fail(f"loading {model.path} failed: {type(exc).__name__}: {exc}")
    state.status = "ready"
    _banner(config, state, bound)
    engine_died = asyncio.Event()
    state.engine.watch(lambda exc: loop.call_soon_threadsafe(engine_died.set))
    died_wait = asyncio.ensure_future(engine_died.wait())
    await asyncio.wait([stop_wait, died_wait], return_when=asyncio.FIRST_COMPLETED)
    if engine_died.is_set():
        log.critical("the engine failed (%s); exiting so that a supervisor restarts the server",
                     state.engine.failure)
        await _shutdown(state, server, 0.0)
        return 1
    died_wait.cancel()
    await _shutdown(state, server, config.shutdown_grace)
    return 0


def _exit_now(code: int) -> None:
    """End the process without interpreter finalization (no atexit, no C++ static
    destructors racing threads still inside the runtime)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _shutdown(state: AppState, server: HTTPServer, grace: float) -> None:
    log.info("shutting down (grace %.1fs, %d request(s) in flight)", grace, len(state.active))
    # Draining: still listening, so a gateway's health check reads 503 and stops routing
    # here; new requests get 503 (a gateway retries them elsewhere); in-flight ones finish.
    state.status = "stopping"
    deadline = time.monotonic() + grace
    while state.active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    server.stop()
    for handler in list(state.active):
        handler.abort_for_shutdown()
    deadline = time.monotonic() + 1.0
    while state.active and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if state.engine is not None:
        await asyncio.get_running_loop().run_in_executor(None, state.engine.shutdown, 2.0)
    try:
        await asyncio.wait_for(server.close_all_connections(), 1.0)
    except asyncio.TimeoutError:
        pass
