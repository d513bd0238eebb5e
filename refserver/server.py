"""Start-up and shutdown: listen first, load the model in the background, serve, stop.

`/health` answers 503 "Loading model" until the tokenizer, template, backend and engine
are ready.  SIGTERM/SIGINT: stop accepting connections, give in-flight requests
--shutdown-grace seconds, end the streams still open with an error event, exit 0.
Start-up failures print one line on stderr and exit 1.  Should the engine thread die, the
server cannot serve any more: `/health` answers 503 at once and the process exits 1, so
a supervisor restarts it (`REFSERVER_INJECT_ENGINE_FAULT=1` forces this, for tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace

from tornado.httpserver import HTTPServer

from .config import ServerConfig
from .errors import RefserverError
from .http.app import make_app
from .http.state import AppState, ModelSummary
from .model_dir import ModelDir, ModelDirError, resolve_model_dir
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
    from .engine import Engine
    from .metrics import Metrics
    from .tokenizer import TextTokenizer

    try:
        tokenizer = TextTokenizer(model.path)
    except Exception as exc:  # tokenizers raises plain Exceptions
        raise StartupError(f"cannot read the tokenizer of {model.path}: {exc}") from exc
    try:
        template = resolve_chat_template(config.chat_template, config.chat_template_file, model.chat_template,
                                         tokenizer.bos_token, tokenizer.eos_token, jinja=config.jinja)
    except RefserverError as exc:
        raise StartupError(f"{exc.message}; fix --chat-template / --chat-template-file") from exc
    try:
        backend = backends.load(model.path, device=config.device, threads=config.threads)
        draft = None
        if config.model_draft:
            draft = backends.load(config.model_draft, device=config.device, threads=config.threads_draft)
    except BackendError as exc:
        raise StartupError(str(exc)) from exc
    try:
        engine_config = replace(config.engine_config(),
                                inject_fault=os.environ.get("REFSERVER_INJECT_ENGINE_FAULT") == "1")
        engine = Engine(backend, tokenizer, engine_config, draft=draft)
        engine.start()
    except (BackendError, RefserverError, ValueError) as exc:
        raise StartupError(f"cannot start the engine: {exc}") from exc

    info = backend.info
    state.model = ModelSummary(
        alias=model.alias, path=str(model.path), n_vocab=info.vocab_size,
        n_ctx_train=info.context_length or model.n_ctx_train,
        n_embd=int(model.config.get("hidden_size", 0) or 0), n_params=info.n_params, size=info.size_bytes)
    state.defaults = config.request_defaults(has_draft=draft is not None)
    state.tokenizer, state.template, state.engine = tokenizer, template, engine
    if config.metrics:
        state.metrics = Metrics(engine.stats)


def run(config: ServerConfig) -> int:
    try:
        model = resolve_model_dir(config.model, config.alias)
        if config.model_draft:
            resolve_model_dir(config.model_draft, flag="-md")
        from backends.errors import ProviderUnavailable
        from backends.onnx_runtime import check_device

        check_device(config.device)
    except ModelDirError as exc:
        return _fail(str(exc))
    except ProviderUnavailable as exc:
        return _fail(str(exc))
    _setup_logging(config.verbose)
    return asyncio.run(_serve(config, model))


async def _serve(config: ServerConfig, model: ModelDir) -> int:
    loop = asyncio.get_running_loop()
    state = AppState(config, bridge=EventBridge(loop, config.stream_interval_ms / 1000))
    state.model = ModelSummary(alias=model.alias, path=str(model.path))
    app = make_app(state)
    limit = int(config.max_body_mb * 1024 * 1024)
    # Oversized bodies (up to 1 GiB or 64x the limit) are read and dropped, so the client
    # gets a clean 413 rather than a reset connection.
    server = HTTPServer(app, max_body_size=max(64 * limit, 1 << 30), idle_connection_timeout=300)
    try:
        server.listen(config.port, config.host)
    except OSError as exc:
        return _fail(f"cannot listen on {config.host}:{config.port} ({exc.strerror}); pick another --port")

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

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
        server.stop()
        return 0
    exc = loaded.exception()
    if exc is not None:
        server.stop()
        if isinstance(exc, StartupError):
            return _fail(str(exc))
        return _fail(f"loading {model.path} failed: {type(exc).__name__}: {exc}")
    state.status = "ready"
    log.info("serving %s (alias %s) on http://%s:%d with %d slot(s) of %d tokens", model.path, model.alias,
             config.host, config.port, config.n_slots, state.engine.n_ctx_slot)
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


async def _shutdown(state: AppState, server: HTTPServer, grace: float) -> None:
    log.info("shutting down (grace %.1fs, %d request(s) in flight)", grace, len(state.active))
    state.status = "stopping"
    server.stop()
    deadline = time.monotonic() + grace
    while state.active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
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
