"""Suite-wide options, markers, server clean-up and the conformance report.

Options:
  --server-url URL          test a server someone else runs (nothing is started)
  --server-bin PATH         start another binary that takes llama-server's flags
  --conformance-report PATH write a Markdown report: identity + a table per feature

Markers: every test carries exactly one `feature(name)` (names in FEATURES); `golden`
(values of refserver's own models: skipped unless the suite starts refserver itself);
`needs_flags` (starts servers with particular flags: skipped with --server-url);
`extension` (a refserver behaviour beyond the contract, e.g. its own metrics or
headers: skipped unless the suite starts refserver itself);
`needs_shared` (needs ../shared: skipped where it is absent).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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


def pytest_addoption(parser):
    group = parser.getgroup("refserver")
    group.addoption("--server-url", default=None,
                    help="test an already running server at URL (starts nothing)")
    group.addoption("--server-bin", default=None,
                    help="start this binary (taking llama-server's flags) instead of refserver")
    group.addoption("--conformance-report", default=None, metavar="PATH",
                    help="write a Markdown conformance report to PATH")


def pytest_configure(config):
    config.addinivalue_line("markers", "feature(name): the feature a test checks (exactly one per test)")
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
    config._refserver_results = {}  # nodeid -> [feature, outcome, message]
    config._refserver_features = {}


def pytest_collection_modifyitems(config, items):
    bad = []
    skip_golden = pytest.mark.skip(reason="golden value of refserver's own models; the target is another "
                                          "server or model")
    skip_flags = pytest.mark.skip(reason="needs a server started with particular flags; --server-url given")
    skip_shared = pytest.mark.skip(reason=f"{utils.SHARED_DIR} is absent")
    skip_extension = pytest.mark.skip(reason="a refserver extension beyond the contract; the target is "
                                             "another server")
    for item in items:
        marks = list(item.iter_markers("feature"))
        names = [m.args[0] if m.args else None for m in marks]
        if len(names) != 1 or names[0] not in FEATURES:
            bad.append(f"{item.nodeid}: feature markers {names}")
            continue
        config._refserver_features[item.nodeid] = names[0]
        if item.get_closest_marker("golden") and not utils.TARGET.is_refserver:
            item.add_marker(skip_golden)
        if item.get_closest_marker("needs_flags") and not utils.TARGET.starts_servers:
            item.add_marker(skip_flags)
        if item.get_closest_marker("extension") and not utils.TARGET.runs_refserver:
            item.add_marker(skip_extension)
        if item.get_closest_marker("needs_shared") and not utils.STORIES260K_DIR.is_dir():
            item.add_marker(skip_shared)
    if bad:
        raise pytest.UsageError("every test needs exactly one known feature marker:\n  " + "\n  ".join(bad))


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
    return report


def _record(item, call, report) -> None:
    results = item.config._refserver_results
    feature = item.config._refserver_features.get(item.nodeid)
    if feature is None:
        return
    entry = results.setdefault(item.nodeid, [feature, "passed", ""])
    if report.failed and entry[1] != "failed":
        entry[1] = "failed"
        entry[2] = _failure_message(call, report)
    elif report.skipped and entry[1] == "passed":
        entry[1] = "skipped"
        if isinstance(report.longrepr, tuple):
            entry[2] = str(report.longrepr[2])


def _failure_message(call, report) -> str:
    if call.excinfo is not None:
        text = call.excinfo.exconly()
    else:
        text = str(report.longrepr)
    text = " ".join(text.split())
    return text[:200]


def _abbreviate(value, depth: int = 0):
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:77] + "..."
    if isinstance(value, dict):
        if depth >= 3:
            return "{...}"
        items = list(value.items())
        out = {k: _abbreviate(v, depth + 1) for k, v in items[:12]}
        if len(items) > 12:
            out["..."] = f"{len(items) - 12} more keys"
        return out
    if isinstance(value, list):
        items = [_abbreviate(v, depth + 1) for v in value[:4]]
        return items + ["..."] if len(value) > 4 else items
    return value


def write_report(config, path: Path) -> None:
    identity = dict(utils.IDENTITY)
    if not identity and utils.TARGET.server_url:
        try:
            server = utils.ServerProcess()
            server._attach(utils.TARGET.server_url, timeout=5)
            identity = dict(utils.IDENTITY)
        except Exception as exc:  # noqa: BLE001 - the report is still written
            identity = {"target": utils.TARGET.server_url, "error": str(exc)}
    rows: dict[str, list] = {name: [0, 0, 0, ""] for name in FEATURES}
    for feature, outcome, message in config._refserver_results.values():
        row = rows[feature]
        row[{"passed": 0, "failed": 1, "skipped": 2}[outcome]] += 1
        if outcome == "failed" and not row[3]:
            row[3] = message
    totals = [sum(r[i] for r in rows.values()) for i in range(3)]
    lines = [
        "# Conformance report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `pytest tests/unit`.",
        "",
        f"- target: `{identity.get('target', 'n/a')}`",
        f"- server binary: `{utils.TARGET.server_bin or 'refserver'}`",
        f"- totals: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped",
        "",
        "## Server identity",
        "",
        "`GET /props` (abbreviated):",
        "",
        "```json",
        json.dumps(_abbreviate(identity.get("props")), indent=1, ensure_ascii=False),
        "```",
        "",
        "`GET /v1/models` (abbreviated):",
        "",
        "```json",
        json.dumps(_abbreviate(identity.get("models")), indent=1, ensure_ascii=False),
        "```",
        "",
        "## Results",
        "",
        "| feature | passed | failed | skipped | first failure |",
        "|---|---|---|---|---|",
    ]
    for name, (passed, failed, skipped, message) in rows.items():
        if passed + failed + skipped == 0:
            continue
        message = message.replace("|", "\\|")
        lines.append(f"| {name} | {passed} | {failed} | {skipped} | {message} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
