"""Command line: llama-server's flag names (same meaning) → `ServerConfig`, then start-up.

    refserver -m models/stories260K/onnx-genai --port 8080 -c 512 -np 2 --metrics

Defaults follow llama-server, except `-np/--parallel`, which is 1 (llama-server picks
"auto", 4 slots in recent versions), and `-c/--ctx-size`, whose 0 default means the
model's own context length.  Errors at start-up are one line on stderr: exit code 2 for a
bad command line, 1 for a model or provider that cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import BACKENDS, ServerConfig


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one stderr line (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"refserver: error: {message} (see 'refserver --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="refserver", allow_abbrev=False,
                       description="Reference LLM server (llama.cpp-native and OpenAI-compatible HTTP API) "
                                   "over ONNX Runtime.")
    add = p.add_argument
    add("--version", action="version", version=f"refserver {__version__}")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    g.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="required API key; repeatable, or comma-separated")
    g.add_argument("--api-key-file", metavar="FILE", help="file with one API key per line")
    g.add_argument("--cors-origins", default="*", metavar="LIST",
                   help="comma-separated origins allowed by CORS, or * for any (default *)")
    g.add_argument("--metrics", action="store_true", help="enable the Prometheus /metrics endpoint")
    g.add_argument("--slots", action=argparse.BooleanOptionalAction, default=True,
                   help="enable the /slots endpoint (default on)")
    g.add_argument("--props", action="store_true", help="allow POST /props")
    g.add_argument("--verbose", "-v", action="store_true",
                   help="verbose logs (prompt text included) and __verbose in chat responses")
    g.add_argument("--strict", action="store_true", help="reject unknown request fields with 400")
    g.add_argument("--sse-keepalive", type=float, default=5.0, metavar="SECONDS",
                   help="SSE comment interval while a stream waits or pre-fills (default 5)")
    g.add_argument("--stream-interval-ms", type=float, default=25.0, metavar="MS",
                   help="while tokens keep coming, send a stream's pending tokens together at most "
                        "every MS ms (one SSE event each; first token and end go at once); "
                        "0 sends each token alone (default 25)")
    g.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB",
                   help="largest request body accepted (default 16)")
    g.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="most requests waiting for a slot; more get 503 (default and 0: no limit)")
    g.add_argument("--shutdown-grace", type=float, default=3.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, time left to in-flight requests (default 3)")
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", metavar="DIR", help="model directory (default: the embedded model)")
    g.add_argument("--alias", help="model name reported by the API (default: the directory name)")
    g.add_argument("--backend", choices=sorted(BACKENDS), default="onnx-cpu", help="runtime (default onnx-cpu)")
    g.add_argument("--threads", "-t", type=int, default=0, help="CPU threads (default 0: all cores)")
    g.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="total context, split over the slots (default 0: the model's)")
    g.add_argument("-np", "--parallel", type=int, default=1, help="number of slots (default 1)")
    g.add_argument("-b", "--batch-size", type=int, default=2048, help="prompt tokens per model call (default 2048)")
    g.add_argument("--context-shift", action=argparse.BooleanOptionalAction, default=False,
                   help="when a slot's context fills, drop the older half of its tokens (after n_keep) "
                        "and go on generating (default off: the request ends, truncated)")
    g.add_argument("--cache-ram", type=int, default=None, metavar="MiB", help="prompt cache size in MiB")
    g.add_argument("--prompt-cache-size", type=int, default=None, metavar="N",
                   help="most entries in the prompt cache")
    g.add_argument("-md", "--model-draft", metavar="DIR", help="draft model directory (speculative decoding)")
    g.add_argument("--draft-max", "--draft", "--draft-n", type=int, default=16, help="most draft tokens (16)")
    g.add_argument("--draft-min", "--draft-n-min", type=int, default=0, help="fewest draft tokens (0)")
    g.add_argument("--draft-p-min", type=float, default=0.75, help="minimum draft probability (0.75)")
    g.add_argument("-td", "--threads-draft", type=int, default=1,
                   help="CPU threads of the draft model (default 1: a small draft gains nothing from more, "
                        "and its idle threads would spin against the main model's; 0: all cores)")
    g = p.add_argument_group("sampling and chat")
    g.add_argument("-n", "--n-predict", type=int, default=-1, help="tokens to generate for requests that give no n_predict/max_tokens; a request's own value wins (default -1: until EOS or the context is full)")
    g.add_argument("--temp", type=float, default=0.8, help="default temperature (0.8)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="default seed (-1: random)")
    g.add_argument("--jinja", action=argparse.BooleanOptionalAction, default=True,
                   help="use the Jinja chat template engine (needed for tools; default on)")
    g.add_argument("--chat-template", metavar="NAME|JINJA", help="named or inline chat template")
    g.add_argument("--chat-template-file", metavar="FILE", help="chat template file")
    return p


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    keys = [k.strip() for arg in a.api_key for k in arg.split(",") if k.strip()]
    if a.api_key_file:
        try:
            lines = Path(a.api_key_file).read_text().splitlines()
        except OSError as exc:
            parser.error(f"cannot read --api-key-file {a.api_key_file}: {exc.strerror}")
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    checks = [
        (not 0 <= a.port <= 65535, "--port must be in 0..65535"),
        (a.parallel < 1, "--parallel must be at least 1"),
        (a.ctx_size < 0, "--ctx-size must be 0 (model default) or positive"),
        (a.batch_size < 1, "--batch-size must be at least 1"),
        (a.n_predict < -1, "--n-predict must be -1 or more"),
        (a.sse_keepalive <= 0, "--sse-keepalive must be positive"),
        (a.stream_interval_ms < 0, "--stream-interval-ms must be 0 or more"),
        (a.max_body_mb <= 0, "--max-body-mb must be positive"),
        (a.shutdown_grace < 0, "--shutdown-grace must be 0 or more"),
        # a negative value would make the engine's queue always "full" (every request 503)
        (a.max_queue is not None and a.max_queue < 0, "--max-queue must be 0 (no limit) or more"),
        (a.threads < 0, "--threads must be 0 (all cores) or more"),
        (a.threads_draft < 0, "--threads-draft must be 0 (all cores) or more"),
        (a.draft_max < 0 or a.draft_min < 0, "--draft-max/--draft-min must be 0 or more"),
        (a.chat_template_file is not None and not Path(a.chat_template_file).is_file(),
         f"--chat-template-file {a.chat_template_file} not found"),
    ]
    for bad, message in checks:
        if bad:
            parser.error(message)
    return ServerConfig(
        host=a.host, port=a.port, model=a.model, model_draft=a.model_draft, draft_max=a.draft_max,
        draft_min=a.draft_min, draft_p_min=a.draft_p_min, n_ctx=a.ctx_size, n_slots=a.parallel,
        batch_size=a.batch_size, n_predict=a.n_predict, temperature=a.temp, seed=a.seed, slots=a.slots,
        jinja=a.jinja, chat_template=a.chat_template, chat_template_file=a.chat_template_file,
        alias=a.alias, api_keys=keys, metrics=a.metrics, verbose=a.verbose, threads=a.threads,
        threads_draft=a.threads_draft, cache_ram_mib=a.cache_ram, cors_origins=[o.strip() for o in a.cors_origins.split(",") if o.strip()],
        backend=a.backend, strict=a.strict, sse_keepalive=a.sse_keepalive,
        stream_interval_ms=a.stream_interval_ms, prompt_cache_size=a.prompt_cache_size,
        max_body_mb=a.max_body_mb, max_queue=a.max_queue,
        shutdown_grace=a.shutdown_grace, props=a.props, context_shift=a.context_shift,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from .server import run  # heavy imports only once the command line is valid

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
