"""Command line: llama-server's flag names (same meaning) → `ServerConfig`, then start-up.

    refserver -m models/stories260K/onnx-genai --port 8080 -c 512 -np 2 --metrics

Defaults follow llama-server: 4 slots sharing the context (`-c`, 0 = the model's own
length) as llama.cpp's unified KV does.  Every other llama-server flag is accepted too
(llama_flags.py).  Errors at start-up are one line on stderr: exit code 2 for a bad
command line, 1 for a model or provider that cannot be used.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .chat.named_templates import NAMED_TEMPLATES
from .llama_flags import add_llama_flags

BACKENDS = {"onnx-cpu": "cpu", "onnx-cuda": "cuda", "onnx-dml": "dml"}
MIN_CTX = 32  # a smaller context holds no prompt worth answering

# llama-server's sampling flags: the server-wide defaults of requests that omit the field.
# (flag names, SamplingParams field, type)
SAMPLING_FLAGS: tuple[tuple[tuple[str, ...], str, type], ...] = (
    (("--top-k",), "top_k", int), (("--top-p",), "top_p", float), (("--min-p",), "min_p", float),
    (("--top-nsigma", "--top-n-sigma"), "top_n_sigma", float),
    (("--xtc-probability",), "xtc_probability", float), (("--xtc-threshold",), "xtc_threshold", float),
    (("--typical", "--typical-p"), "typical_p", float), (("--repeat-last-n",), "repeat_last_n", int),
    (("--repeat-penalty",), "repeat_penalty", float), (("--presence-penalty",), "presence_penalty", float),
    (("--frequency-penalty",), "frequency_penalty", float), (("--dry-multiplier",), "dry_multiplier", float),
    (("--dry-base",), "dry_base", float), (("--dry-allowed-length",), "dry_allowed_length", int),
    (("--dry-penalty-last-n",), "dry_penalty_last_n", int), (("--dynatemp-range",), "dynatemp_range", float),
    (("--dynatemp-exp",), "dynatemp_exponent", float), (("--mirostat",), "mirostat", int),
    (("--mirostat-lr",), "mirostat_eta", float), (("--mirostat-ent",), "mirostat_tau", float),
    (("--adaptive-target",), "adaptive_target", float), (("--adaptive-decay",), "adaptive_decay", float),
)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # comma-separated: one listener each
    port: int = 8080
    model: str | None = None
    model_draft: str | None = None
    draft_max: int = 16
    draft_min: int = 0
    draft_p_min: float = 0.75
    threads_draft: int = 1
    ctx_size: int = 0  # total tokens of all slots (0: the model's context length)
    parallel: int = 4
    kv_unified: bool = True  # False: each slot gets ctx_size / parallel (llama.cpp's --no-kv-unified)
    batch_size: int = 2048
    n_predict: int = -1
    temp: float | None = None  # None: the model's genai_config.json search default, else 0.8
    seed: int = -1
    slots: bool = True
    jinja: bool = True
    chat_template: str | None = None
    chat_template_file: str | None = None
    alias: str | None = None  # the first of `aliases`
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    metrics: bool = False
    metrics_compat: tuple[str, ...] = ()  # extra metric name sets for routers: "vllm"
    verbose: bool = False
    threads: int = 0
    cache_ram: int | None = None  # MiB
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    cors_methods: str = "GET, POST, DELETE, OPTIONS"
    cors_headers: str = "*"
    webui: bool = True
    sampling: dict = field(default_factory=dict)  # SamplingParams fields set by --top-k, --min-p, ...
    inert_flags: list[str] = field(default_factory=list)  # llama-server flags with no effect here
    backend: str = "onnx-cpu"
    strict: bool = False
    sse_keepalive: float = 5.0
    stream_interval_ms: float = 25.0
    prompt_cache_size: int | None = None
    max_body_mb: float = 16.0
    max_queue: int | None = None
    shutdown_grace: float = 3.0
    timeout: float = 30.0  # seconds a request body may take to arrive
    props: bool = False
    reasoning_format: str = "auto"  # none | deepseek | auto: split <think> off content
    reasoning: str = "auto"  # on | off | auto: the template's enable_thinking
    reasoning_budget: int = -1  # -1: unlimited; 0: thinking off; N: </think> forced after N tokens
    responses_store_size: int = 256
    context_shift: bool = False

    @property
    def device(self) -> str:
        return BACKENDS[self.backend]


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
    add("--usage", action="help", help="show this help message and exit")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address(es) to listen on, comma-separated (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    g.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="required API key; repeatable, or comma-separated")
    g.add_argument("--api-key-file", metavar="FILE", help="file with one API key per line")
    g.add_argument("--cors-origins", default="*", metavar="LIST",
                   help="comma-separated origins allowed by CORS, * for any, or localhost for every "
                        "origin on this machine (default *)")
    g.add_argument("--cors-methods", default="GET, POST, DELETE, OPTIONS", metavar="LIST",
                   help="methods a CORS preflight allows (default GET, POST, DELETE, OPTIONS)")
    g.add_argument("--cors-headers", default="*", metavar="LIST",
                   help="headers a CORS preflight allows (default *)")
    g.add_argument("--ui", "--webui", "--no-ui", "--no-webui", dest="ui", nargs=0, action=_NegatableSwitch,
                   default=True, help="serve the chat page at / (default on)")
    g.add_argument("--metrics", action="store_true", help="enable the Prometheus /metrics endpoint")
    g.add_argument("--metrics-compat", action="append", choices=["vllm"], default=[], metavar="vllm",
                   help="also publish the metrics routers read under vLLM's names (vllm:num_requests_waiting, "
                        "vllm:kv_cache_usage_perc, ...), as the Gateway API Inference Extension / llm-d "
                        "endpoint picker expects by default; implies --metrics")
    g.add_argument("--slots", action=argparse.BooleanOptionalAction, default=True,
                   help="enable the /slots endpoint (default on)")
    g.add_argument("--props", action="store_true", help="allow POST /props")
    g.add_argument("--verbose", "-v", "--log-verbose", action="store_true",
                   help="verbose logs (prompt text included) and __verbose in chat responses")
    g.add_argument("--strict", action="store_true", help="reject unknown request fields with 400")
    g.add_argument("--sse-keepalive", type=float, default=5.0, metavar="SECONDS",
                   help="SSE comment interval while a stream waits or pre-fills (default 5)")
    g.add_argument("--stream-interval-ms", type=float, default=25.0, metavar="MS",
                   help="while tokens keep coming, send a stream's pending tokens together at most "
                        "every MS ms (one SSE event each; first token and end go at once); "
                        "0 sends each token alone (default 25)")
    g.add_argument("-to", "--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="most seconds a request body may take to arrive (default 30)")
    g.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB",
                   help="largest request body accepted (default 16)")
    g.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="most requests waiting for a slot; more get 503 (default and 0: no limit)")
    g.add_argument("--shutdown-grace", type=float, default=3.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, time left to in-flight requests (default 3)")
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", metavar="DIR", help="model directory (default: the embedded model)")
    g.add_argument("-a", "--alias", help="model name(s) reported by the API, comma-separated "
                                          "(default: the directory name)")
    g.add_argument("--tags", default="", help="model tags listed by /v1/models, comma-separated")
    g.add_argument("--backend", choices=sorted(BACKENDS), default="onnx-cpu", help="runtime (default onnx-cpu)")
    g.add_argument("--threads", "-t", type=int, default=0, help="CPU threads (default 0: all cores)")
    g.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="total tokens in use by all slots at once; each slot may use up to all of it, "
                        f"or the model's own context if smaller (default 0: the model's; at least {MIN_CTX})")
    g.add_argument("-np", "--parallel", type=int, default=4, help="number of slots (default 4)")
    g.add_argument("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified", dest="kv_unified", nargs=0,
                   action=_NegatableSwitch, default=True,
                   help="slots share the context (default); --no-kv-unified gives each ctx-size/parallel")
    g.add_argument("-b", "--batch-size", type=int, default=2048, help="prompt tokens per model call (default 2048)")
    g.add_argument("--context-shift", action=argparse.BooleanOptionalAction, default=False,
                   help="when a slot's context fills, drop the older half of its tokens (after n_keep) "
                        "and go on generating (default off: the request ends, truncated)")
    g.add_argument("-cram", "--cache-ram", type=int, default=None, metavar="MiB", help="prompt cache size in MiB")
    g.add_argument("--prompt-cache-size", type=int, default=None, metavar="N",
                   help="most entries in the prompt cache")
    g.add_argument("-md", "--model-draft", "--spec-draft-model", metavar="DIR",
                   help="draft model directory (speculative decoding)")
    g.add_argument("--draft-max", "--draft", "--draft-n", "--spec-draft-n-max", type=int, default=16,
                   help="most draft tokens (16)")
    g.add_argument("--draft-min", "--draft-n-min", "--spec-draft-n-min", type=int, default=0,
                   help="fewest draft tokens (0)")
    g.add_argument("--draft-p-min", "--spec-draft-p-min", type=float, default=0.75,
                   help="minimum draft probability (0.75)")
    g.add_argument("-td", "--threads-draft", "--spec-draft-threads", type=int, default=1,
                   help="CPU threads of the draft model (default 1: a small draft gains nothing from more, "
                        "and its idle threads would spin against the main model's; 0: all cores)")
    g = p.add_argument_group("sampling and chat")
    g.add_argument("-n", "--n-predict", "--predict", type=int, default=-1,
                   help="tokens to generate for requests that give no n_predict/max_tokens; a request's own "
                        "value wins (default -1: until EOS or the context is full)")
    g.add_argument("--temp", "--temperature", type=float, default=None,
                   help="default temperature (default: the model's genai_config.json, else 0.8)")
    for names, name, kind in SAMPLING_FLAGS:
        g.add_argument(*names, dest=f"sampling_{name}", type=kind, default=argparse.SUPPRESS, metavar="N",
                       help=f"default {name} of requests that omit it")
    g.add_argument("--ignore-eos", dest="sampling_ignore_eos", action="store_true", default=argparse.SUPPRESS,
                   help="requests ignore the end-of-generation token unless they say otherwise")
    g.add_argument("-s", "--seed", type=int, default=-1, help="default seed (-1: random)")
    g.add_argument("--jinja", action=argparse.BooleanOptionalAction, default=True,
                   help="use the Jinja chat template engine (needed for tools; default on)")
    g.add_argument("--chat-template", metavar="NAME|JINJA",
                   help="a built-in template's name or the Jinja text itself; names: "
                        + ", ".join(sorted(NAMED_TEMPLATES)))
    g.add_argument("--chat-template-file", metavar="FILE", help="chat template file")
    g.add_argument("--reasoning-format", choices=["none", "deepseek", "auto"], default="auto",
                   help="where <think> reasoning goes: none leaves it in content; deepseek and auto put it in "
                        "reasoning_content (chat), reasoning items (Responses), thinking blocks (Messages)")
    g.add_argument("-rea", "--reasoning", choices=["on", "off", "auto"], default="auto", nargs="?", const="on",
                   help="thinking for templates that support it (enable_thinking); auto: the template's default")
    g.add_argument("--reasoning-budget", type=int, default=-1, metavar="N",
                   help="-1: unlimited thinking; 0: thinking off (enable_thinking false); N: </think> is forced "
                        "after N reasoning tokens")
    g.add_argument("--responses-store-size", type=int, default=256, metavar="N",
                   help="most responses kept for store: true / previous_response_id (LRU; 0: none)")
    add_llama_flags(p)
    return p


class _NegatableSwitch(argparse.Action):
    """A switch whose `--no-...` / `-no-...` spellings set False (llama.cpp's `-kvu` / `-no-kvu`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.lstrip("-").startswith("no-"))


def _check_chat_template(value: str | None) -> str | None:
    """A bare word that names no built-in template is a typo, not a template."""
    if value is not None and value not in NAMED_TEMPLATES and re.fullmatch(r"[\w.\-]+", value):
        return (f"--chat-template {value}: no built-in template has that name; known names: "
                f"{', '.join(sorted(NAMED_TEMPLATES))} (or pass Jinja text, or --chat-template-file FILE)")
    return None


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


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
        (a.ctx_size < 0 or 0 < a.ctx_size < MIN_CTX, f"--ctx-size must be 0 (the model's) or at least {MIN_CTX}"),
        (not _split(a.host), "--host needs at least one address"),
        (_check_chat_template(a.chat_template) is not None, _check_chat_template(a.chat_template)),
        (a.batch_size < 1, "--batch-size must be at least 1"),
        (a.n_predict < -1, "--n-predict must be -1 or more"),
        (a.sse_keepalive <= 0, "--sse-keepalive must be positive"),
        (a.stream_interval_ms < 0, "--stream-interval-ms must be 0 or more"),
        (a.max_body_mb <= 0, "--max-body-mb must be positive"),
        (a.timeout <= 0, "--timeout must be positive"),
        (a.shutdown_grace < 0, "--shutdown-grace must be 0 or more"),
        # a negative value would make the engine's queue always "full" (every request 503)
        (a.max_queue is not None and a.max_queue < 0, "--max-queue must be 0 (no limit) or more"),
        (a.threads < 0, "--threads must be 0 (all cores) or more"),
        (a.reasoning_budget < -1, "--reasoning-budget must be -1 (unlimited), 0 (thinking off) or a token count"),
        (a.responses_store_size < 0, "--responses-store-size must be 0 or more"),
        (a.threads_draft < 0, "--threads-draft must be 0 (all cores) or more"),
        (a.draft_max < 0 or a.draft_min < 0, "--draft-max/--draft-min must be 0 or more"),
        (a.chat_template_file is not None and not Path(a.chat_template_file).is_file(),
         f"--chat-template-file {a.chat_template_file} not found"),
    ]
    for bad, message in checks:
        if bad:
            parser.error(message)
    aliases = _split(a.alias)
    sampling = {k.removeprefix("sampling_"): v for k, v in vars(a).items() if k.startswith("sampling_")}
    return ServerConfig(
        host=a.host, port=a.port, model=a.model, model_draft=a.model_draft, draft_max=a.draft_max,
        draft_min=a.draft_min, draft_p_min=a.draft_p_min, ctx_size=a.ctx_size, parallel=a.parallel,
        batch_size=a.batch_size, n_predict=a.n_predict, temp=a.temp, seed=a.seed, slots=a.slots,
        jinja=a.jinja, chat_template=a.chat_template, chat_template_file=a.chat_template_file,
        alias=aliases[0] if aliases else None, aliases=aliases, tags=_split(a.tags), api_keys=keys,
        metrics=a.metrics or bool(a.metrics_compat), metrics_compat=tuple(dict.fromkeys(a.metrics_compat)),
        verbose=a.verbose, threads=a.threads,
        threads_draft=a.threads_draft, cache_ram=a.cache_ram, cors_origins=[o.strip() for o in a.cors_origins.split(",") if o.strip()],
        backend=a.backend, strict=a.strict, sse_keepalive=a.sse_keepalive,
        stream_interval_ms=a.stream_interval_ms, prompt_cache_size=a.prompt_cache_size,
        max_body_mb=a.max_body_mb, max_queue=a.max_queue,
        reasoning_format=a.reasoning_format, reasoning=a.reasoning, reasoning_budget=a.reasoning_budget,
        responses_store_size=a.responses_store_size,
        shutdown_grace=a.shutdown_grace, props=a.props, context_shift=a.context_shift, timeout=a.timeout,
        kv_unified=a.kv_unified, cors_methods=a.cors_methods, cors_headers=a.cors_headers, webui=a.ui,
        sampling=sampling, inert_flags=getattr(a, "inert_flags", []),
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from .server import run  # heavy imports only once the command line is valid

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
