"""Suite-wide options, markers, the target's discovery, profiles and the conformance report.

Options:
  --server-url URL          test a server someone else runs (nothing is started)
  --server-bin PATH         start another binary that takes llama-server's flags
  --profile P               auto (default) | openai | llamacpp | refserver | all, or a comma list
  --conformance-report PATH write a Markdown report: identity, layers found, totals per
                            profile, every failure with the clause it checks and where that
                            clause is documented, tests not run after the target died

Every test carries two markers (module-level `pytestmark` or on the test; the closest wins):

* `feature(name)`: the report's row (names in FEATURES).
* `profile(layer)`: which layer of the contract it checks (CONTRACT §0), one of
  - `openai`: only what OpenAI's API reference documents (chat, completions, models,
    streaming, tools, structured output, logprobs, errors).  Such a test uses no native
    route, takes token counts from `usage` and the model id from `/v1/models`
    (`server.model_id()`), accepts any OpenAI-valid error `code` (`utils.error_of` does);
  - `llamacpp`: llama.cpp's native routes (/completion, /props, /tokenize, /slots,
    /apply-template, /metrics) and its extensions on /v1/* (grammar, n_probs, timings,
    cache_prompt, `code` = HTTP status, ...);
  - `refserver`: refserver's own choices and golden values (CONTRACT §0 decisions).
  A test that reads a native route only to learn a setting is still `openai` if what it
  asserts is OpenAI's; against a target without that route it skips (below).
  New endpoints: /v1/responses tests are `openai` (they skip where the route is absent);
  Anthropic /v1/messages tests are `llamacpp` (llama.cpp's translation of Messages); chat
  template renderings are `llamacpp` when they go through /apply-template, `refserver` when
  they call refserver's library.  A pytest.param(..., marks=pytest.mark.profile(...)) gives
  one parameter its own layer (e.g. a llama.cpp-only variant of an OpenAI test).

Optional: `clause(what, where=None)`: the rule the test checks and where it is documented,
for the report.  Without it the report uses the test's docstring (first sentence) and the
default source of its (profile, feature) in DOCS.  Write the docstring as the rule.

Discovery (tests/discovery.py): with --server-url the suite probes /props, /completion,
/tokenize, /apply-template, /slots, /metrics, /v1/responses, /v1/messages and the `Server`
header once.  `--profile auto` runs the layers the target offers and skips the others with
the probe's answer as the reason; an explicit profile demands its layers (a missing one stops
the run at once).  Any request a test makes to a route the target lacks skips that test
(`ServerProcess.make_request` asks discovery); loops over routes use `server.offered(paths)`
so a missing route is left out instead of ending the loop; `utils.TARGET.require("slots")`
skips explicitly.  A target that stops answering (checked after each failure) ends the run:
the report names the last test and lists the rest as not run.  A binary the suite starts
itself (`--server-bin`, e.g. llama-server) is not probed: it is taken to offer the openai
and llamacpp layers, and the refserver layer is absent (its tests skip).

Other markers: `golden` (values of refserver's own models: skipped unless the suite starts
refserver itself); `needs_flags` (starts servers with particular flags: skipped with
--server-url); `extension` (a refserver behaviour beyond the contract: skipped unless the
target is refserver); `needs_shared` (needs ../shared: skipped where it is absent).
"""

from __future__ import annotations

from pathlib import Path

import conformance_report as report_mod
import discovery
import pytest
import utils

# One row per feature; the conformance report has one line per row.
FEATURES: dict[str, str] = {
    "basic": "/health, /props, /models, /slots listing, UI, unknown routes",
    "completion": "native /completion and /v1/completions",
    "chat": "/v1/chat/completions requests and responses",
    "streaming": "SSE chunk rules on every endpoint",
    "tokenize": "/tokenize and /detokenize",
    "templates": "chat templates: named, custom, /apply-template, prefill",
    "tools": "tool calls, tool_choice, streamed tool calls",
    "structured_output": "response_format, json_schema, grammar",
    "sampling": "sampling parameters: logit_bias, samplers, stop, n_predict",
    "logprobs": "n_probs / logprobs in both shapes, streamed and not",
    "slots": "parallel slots, id_slot, queueing",
    "cancellation": "client disconnects free slots",
    "prompt_cache": "prompt reuse: cache_n, cached_tokens, cross-slot",
    "speculative": "draft-model speculative decoding",
    "keepalive": "SSE keepalive comments while waiting or pre-filling",
    "security": "API keys and CORS",
    "metrics": "/metrics",
    "limits": "body size, queue length, hostile input, shutdown",
    "fuzz": "property-based fuzzing of every POST endpoint",
    "determinism": "seeded output independent of slots, batch size and load",
    "complaints": "CONTRACT §9: what users of other servers complain about",
    "openai_client": "the official openai client, sync and async",
    "responses": "OpenAI Responses API: /v1/responses, streamed, stored, tools",
    "messages": "Anthropic Messages API: /v1/messages, count_tokens, its error shape",
    "reasoning": "reasoning split from content on chat, Responses and Messages",
    "mlx": "mlx-lm's server tests over HTTP",
    "backend": "start-up errors and backend selection",
    "engine": "model execution: reproducing reference greedy ids",
    "zoo": "every architecture and precision of the model zoo, token for token; HF directory conventions",
    "harness": "the suite's own helpers (tests/utils.py), no server",
}


PROFILES = ("openai", "llamacpp", "refserver")

OPENAI_REF = "OpenAI API reference, platform.openai.com/docs/api-reference"
LLAMACPP_REF = "llama.cpp tools/server/README.md"
CONTRACT_REF = "refserver CONTRACT.md"
ERROR_OBJECT = ("the error object {\"error\": {message, type, param, code}} of every OpenAI error "
                "(platform.openai.com/docs/guides/error-codes; CONTRACT §0, §6)")

# Where a (profile, feature) pair's rules are documented, when a test names no `clause`.
DOCS: dict[tuple[str, str], str] = {
    ("openai", "basic"): f"{OPENAI_REF}/models/list (List models)",
    ("openai", "completion"): f"{OPENAI_REF}/completions/create (Create completion)",
    ("openai", "chat"): f"{OPENAI_REF}/chat/create (Create chat completion)",
    ("openai", "streaming"): f"{OPENAI_REF}/chat-streaming (The chat completion chunk object) "
                             "and /chat/create `stream`, `stream_options`",
    ("openai", "tools"): f"{OPENAI_REF}/chat/create `tools`, `tool_choice`; the chat completion "
                         "object `message.tool_calls`",
    ("openai", "structured_output"): f"{OPENAI_REF}/chat/create `response_format`",
    ("openai", "sampling"): f"{OPENAI_REF}/chat/create `temperature`, `top_p`, `stop`, "
                            "`max_completion_tokens`, `seed`, `logit_bias`, `n`, penalties",
    ("openai", "logprobs"): f"{OPENAI_REF}/chat/create `logprobs`, `top_logprobs`; "
                            "/completions/create `logprobs`",
    ("openai", "security"): f"{OPENAI_REF} Authentication (Bearer API keys)",
    ("openai", "limits"): f"{OPENAI_REF} and platform.openai.com/docs/guides/error-codes "
                          "(error object: message, type, param, code)",
    ("openai", "fuzz"): f"{OPENAI_REF} request bodies; error object (message, type, param, code)",
    ("openai", "openai_client"): "openai-python (github.com/openai/openai-python) against the "
                                 f"{OPENAI_REF} shapes",
    ("openai", "complaints"): f"{OPENAI_REF}; the user reports gathered in CONTRACT.md §9",
    ("openai", "responses"): f"{OPENAI_REF}/responses (create, streaming events, retrieve, delete, "
                             "input items)",
    ("llamacpp", "messages"): f"{LLAMACPP_REF} `POST /v1/messages` (Anthropic Messages, "
                              "docs.anthropic.com/en/api/messages)",
    ("llamacpp", "reasoning"): f"{LLAMACPP_REF} `reasoning_content`, `--reasoning-format`",
    ("llamacpp", "basic"): f"{LLAMACPP_REF} `GET /health`, `GET /props`, `GET /slots`",
    ("llamacpp", "completion"): f"{LLAMACPP_REF} `POST /completion`",
    ("llamacpp", "chat"): f"{LLAMACPP_REF} `POST /v1/chat/completions` (llama.cpp's extensions)",
    ("llamacpp", "streaming"): f"{LLAMACPP_REF} `POST /completion` `stream`",
    ("llamacpp", "tokenize"): f"{LLAMACPP_REF} `POST /tokenize`, `POST /detokenize`",
    ("llamacpp", "templates"): f"{LLAMACPP_REF} `POST /apply-template`, `--chat-template`, `--jinja`",
    ("llamacpp", "tools"): "llama.cpp docs/function-calling.md",
    ("llamacpp", "structured_output"): f"{LLAMACPP_REF} `grammar`, `json_schema`; grammars/README.md",
    ("llamacpp", "sampling"): f"{LLAMACPP_REF} `POST /completion` options",
    ("llamacpp", "logprobs"): f"{LLAMACPP_REF} `n_probs`, `completion_probabilities`",
    ("llamacpp", "slots"): f"{LLAMACPP_REF} `GET /slots`, `-np`, `id_slot`",
    ("llamacpp", "prompt_cache"): f"{LLAMACPP_REF} `cache_prompt`, `tokens_cached`, `--cache-ram`",
    ("llamacpp", "metrics"): f"{LLAMACPP_REF} `GET /metrics` (llamacpp: metric names)",
    ("llamacpp", "security"): f"{LLAMACPP_REF} `--api-key`, `--cors-origins`",
    ("llamacpp", "speculative"): f"{LLAMACPP_REF} `--model-draft`, `--draft-max`",
}


def clause_of(item) -> tuple[str, str]:
    """(the rule a test checks, where it is documented), for the report."""
    profile = profile_of(item) or "refserver"
    feature = item.config._refserver_features.get(item.nodeid, "")
    mark = item.get_closest_marker("clause")
    what = mark.args[0] if mark and mark.args else _first_sentence(getattr(item, "function", None))
    where = mark.kwargs.get("where") if mark else None
    if not where and mark and len(mark.args) > 1:
        where = mark.args[1]
    if not where:
        where = DOCS.get((profile, feature)) or {
            "openai": OPENAI_REF, "llamacpp": LLAMACPP_REF}.get(profile, f"{CONTRACT_REF} §0 decisions")
    return what, where


def _first_sentence(func) -> str:
    doc = " ".join((getattr(func, "__doc__", None) or "").split())
    if not doc:
        return "(no docstring)"
    end = doc.find(". ")
    return doc if end < 0 else doc[:end + 1]


def profile_of(item) -> str | None:
    """The test's layer: a `pytest.param(..., marks=profile(...))` wins over the function's
    marker, which wins over the module's."""
    callspec = getattr(item, "callspec", None)
    marks = [m for m in getattr(callspec, "marks", []) if m.name == "profile"]
    mark = marks[0] if marks else item.get_closest_marker("profile")
    return mark.args[0] if mark and mark.args else None


def pytest_addoption(parser):
    group = parser.getgroup("refserver")
    group.addoption("--server-url", default=None,
                    help="test an already running server at URL (starts nothing)")
    group.addoption("--server-bin", default=None,
                    help="start this binary (taking llama-server's flags) instead of refserver")
    group.addoption("--profile", default="auto",
                    help="auto (the layers the target offers) | openai | llamacpp | refserver | all, "
                         "or a comma list")
    group.addoption("--conformance-report", default=None, metavar="PATH",
                    help="write a Markdown conformance report to PATH")


def pytest_configure(config):
    config.addinivalue_line("markers", "feature(name): the feature a test checks (exactly one per test)")
    config.addinivalue_line("markers", "profile(layer): openai | llamacpp | refserver (CONTRACT §0)")
    config.addinivalue_line("markers", "clause(what, where=None): the rule checked and where it is documented")
    config.addinivalue_line("markers", "golden: depends on refserver's own models' outputs")
    config.addinivalue_line("markers", "needs_flags: starts servers with particular flags")
    config.addinivalue_line("markers", "extension: a refserver behaviour beyond the contract")
    config.addinivalue_line("markers", "needs_shared: needs ../shared (stories260K)")
    url = config.getoption("--server-url")
    binary = config.getoption("--server-bin")
    if url:
        utils.TARGET.server_url = url
    if binary:
        utils.TARGET.server_bin = binary
    config._refserver_profiles = _selected_profiles(config.getoption("--profile"))
    config._refserver_results = {}  # nodeid -> [feature, outcome, message]
    config._refserver_features = {}


def _selected_profiles(option: str) -> tuple[str, ...] | None:
    """The explicitly selected profiles, None for auto."""
    if option == "auto":
        return None
    if option == "all":
        return PROFILES
    names = tuple(p.strip() for p in option.split(",") if p.strip())
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        raise pytest.UsageError(f"--profile {option}: use auto, all or a comma list of {', '.join(PROFILES)}")
    return names


def _discover(config) -> None:
    """Probe an external target once; with explicit profiles, every layer they name must be there."""
    url = utils.TARGET.server_url
    if url and utils.TARGET.discovery is None:
        probe_server = utils.ServerProcess()
        try:
            probe_server._attach(url, timeout=30)
        except TimeoutError as exc:
            raise pytest.UsageError(f"--server-url {url}: {exc}") from exc
        utils.TARGET.discovery = discovery.probe(probe_server.url, probe_server._auth_headers())
    for layer in config._refserver_profiles or ():
        reason = utils.TARGET.layer_absent(layer)
        if reason:
            raise pytest.UsageError(f"--profile {layer}: {reason}; use --profile auto to skip it")


def pytest_collection_modifyitems(config, items):
    _discover(config)
    bad = []
    skip_golden = pytest.mark.skip(reason="golden value of refserver's own models; the target is another "
                                          "server or model")
    skip_flags = pytest.mark.skip(reason="needs a server started with particular flags; --server-url given")
    skip_shared = pytest.mark.skip(reason=f"{utils.SHARED_DIR} is absent")
    skip_extension = pytest.mark.skip(reason="a refserver extension beyond the contract; the target is "
                                             "another server")
    selected = config._refserver_profiles
    keep, deselected = [], []
    for item in items:
        marks = list(item.iter_markers("feature"))
        names = [m.args[0] if m.args else None for m in marks]
        profile = profile_of(item)
        if len(names) != 1 or names[0] not in FEATURES or profile not in PROFILES:
            bad.append(f"{item.nodeid}: feature markers {names}, profile {profile}")
            continue
        if selected is not None and profile not in selected:
            deselected.append(item)
            continue
        keep.append(item)
        config._refserver_features[item.nodeid] = names[0]
        layer_absent = utils.TARGET.layer_absent(profile)
        if layer_absent:
            item.add_marker(pytest.mark.skip(reason=layer_absent))
        if item.get_closest_marker("golden") and not utils.TARGET.is_refserver:
            item.add_marker(skip_golden)
        if item.get_closest_marker("needs_flags") and not utils.TARGET.starts_servers:
            item.add_marker(skip_flags)
        if item.get_closest_marker("extension") and not utils.TARGET.runs_refserver:
            item.add_marker(skip_extension)
        if item.get_closest_marker("needs_shared") and not utils.STORIES260K_DIR.is_dir():
            item.add_marker(skip_shared)
    if bad:
        raise pytest.UsageError("every test needs one known feature marker and one profile marker "
                                "(tests/conftest.py):\n  " + "\n  ".join(bad))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


def pytest_runtest_setup(item):
    utils.TARGET.profile = profile_of(item) or "refserver"
    if utils.TARGET.dead_after:
        pytest.skip(f"not run: the target stopped answering after {utils.TARGET.dead_after}")


@pytest.fixture(autouse=True)
def _stop_servers_started_by_test():
    """Stop every server a test started itself (module/session fixtures own theirs)."""
    before = utils.running_servers()
    yield
    for server in utils.running_servers() - before:
        if not server.persistent:
            server.stop()


def pytest_sessionfinish(session, exitstatus):
    for server in utils.running_servers():
        server.stop()
    path = session.config.getoption("--conformance-report")
    if path:
        write_report(session.config, Path(path))


# --------------------------------------------------------------------------- report
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _record(item, call, report)
    if report.failed and utils.TARGET.server_url and not utils.TARGET.dead_after \
            and not utils.target_answers(utils.TARGET.server_url):
        utils.TARGET.dead_after = item.nodeid
    return report


def _record(item, call, report) -> None:
    results = item.config._refserver_results
    feature = item.config._refserver_features.get(item.nodeid)
    if feature is None:
        return
    entry = results.setdefault(item.nodeid, report_mod.Result(feature, profile_of(item) or "refserver"))
    if report.failed and entry.outcome != "failed":
        entry.outcome = "failed"
        entry.message = _failure_message(call, report)
        entry.what, entry.where = clause_of(item)
        if "error envelope" in entry.message or "error code" in entry.message:
            entry.where += f"; {ERROR_OBJECT}"
    elif report.skipped and entry.outcome == "passed":
        entry.outcome = "skipped"
        if isinstance(report.longrepr, tuple):
            entry.message = str(report.longrepr[2])
            entry.message = entry.message.removeprefix("Skipped: ")
        if entry.message.startswith("not run:"):
            entry.outcome = "not run"


def _failure_message(call, report) -> str:
    if call.excinfo is not None:
        text = call.excinfo.exconly()
    else:
        text = str(report.longrepr)
    text = " ".join(text.split())
    return text[:300]


def write_report(config, path: Path) -> None:
    identity = dict(utils.IDENTITY)
    if not identity and utils.TARGET.server_url:
        try:
            server = utils.ServerProcess()
            server._attach(utils.TARGET.server_url, timeout=5)
            identity = dict(utils.IDENTITY)
        except Exception as exc:  # noqa: BLE001 - the report is still written
            identity = {"target": utils.TARGET.server_url, "error": str(exc)}
    text = report_mod.render(
        identity=identity, results=config._refserver_results, features=FEATURES,
        profiles=config._refserver_profiles, discovered=utils.TARGET.discovery,
        server_bin=utils.TARGET.server_bin, dead_after=utils.TARGET.dead_after)
    path.write_text(text, encoding="utf-8")
