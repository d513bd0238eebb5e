"""The Markdown conformance report (`--conformance-report PATH`).

A server engineer reads it to tell a bug from a choice: the layers the target offers (and the
probe answers behind that), the totals per profile, every failure with the rule it checks and
where that rule is documented, the tests not run after the target stopped answering, and the
reasons tests were skipped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from discovery import Discovery

OUTCOMES = ("passed", "failed", "skipped", "not run")


@dataclass
class Result:
    """One test's outcome; `what`/`where` are filled for failures."""

    feature: str
    profile: str
    outcome: str = "passed"
    message: str = ""
    what: str = ""
    where: str = ""


def _abbreviate(value: Any, depth: int = 0) -> Any:
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _counts(results: list[Result]) -> list[int]:
    c = Counter(r.outcome for r in results)
    return [c[o] for o in OUTCOMES]


def _layers(discovered: Discovery | None, profiles: tuple[str, ...] | None, server_bin: str | None) -> list[str]:
    chosen = ", ".join(profiles) if profiles else "auto (the layers the target offers)"
    lines = [f"- profiles: {chosen}"]
    if discovered is None and server_bin:
        return lines + [("- discovery: none (the suite starts --server-bin itself: the openai and llamacpp "
                         "layers; the refserver layer is absent)")]
    if discovered is None:
        return lines + ["- discovery: none (the suite started the server itself: every layer)"]
    lines.append("- discovery (probed once before the first test):")
    for name, (offered, said) in discovered.found.items():
        lines.append(f"  - {name}: {'offered' if offered else 'absent'} ({said})")
    return lines


def render(*, identity: dict, results: dict[str, Result], features: dict[str, str],
           profiles: tuple[str, ...] | None, discovered: Discovery | None, server_bin: str | None,
           dead_after: str | None) -> str:
    everything = list(results.values())
    p, f, s, n = _counts(everything)
    lines = [
        "# Conformance report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `pytest tests/unit`.", "",
        f"- target: `{identity.get('target', 'n/a')}`",
        f"- server binary: `{server_bin or 'refserver'}`",
        f"- totals: {p} passed, {f} failed, {s} skipped, {n} not run",
        *_layers(discovered, profiles, server_bin),
    ]
    if dead_after:
        lines.append(f"- **the target stopped answering after `{dead_after}`**; the {n} tests after "
                     "it were not run (not counted as failures)")
    lines += ["", "## Totals per profile", "", "| profile | passed | failed | skipped | not run |",
              "|---|---|---|---|---|"]
    for profile in sorted({r.profile for r in everything}):
        counts = _counts([r for r in everything if r.profile == profile])
        lines.append(f"| {profile} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", "## Per feature", "", "| feature | passed | failed | skipped | not run |", "|---|---|---|---|---|"]
    for name in features:
        counts = _counts([r for r in everything if r.feature == name])
        if sum(counts):
            lines.append(f"| {name} | " + " | ".join(map(str, counts)) + " |")
    lines += _failures(results) + _skips(everything) + _identity(identity)
    return "\n".join(lines) + "\n"


def _failures(results: dict[str, Result]) -> list[str]:
    failed = [(nodeid, r) for nodeid, r in results.items() if r.outcome == "failed"]
    lines = ["", f"## Failures ({len(failed)})", ""]
    if not failed:
        return lines + ["None."]
    lines += [("Each: the test, its profile, the rule it checks, where the rule is documented, what "
               "the target did."), ""]
    for nodeid, r in failed:
        lines += [f"- `{nodeid}` ({r.profile}, {r.feature})",
                  f"  - clause: {r.what}", f"  - documented: {r.where}", f"  - got: {r.message}"]
    return lines


def _skips(everything: list[Result]) -> list[str]:
    reasons = Counter(r.message for r in everything if r.outcome == "skipped")
    lines = ["", "## Skip reasons", "", "| tests | reason |", "|---|---|"]
    for reason, count in reasons.most_common():
        lines.append(f"| {count} | {_cell(reason[:200])} |")
    return lines


def _identity(identity: dict) -> list[str]:
    return ["", "## Server identity", "", "`GET /props` (abbreviated):", "", "```json",
            json.dumps(_abbreviate(identity.get("props")), indent=1, ensure_ascii=False), "```", "",
            "`GET /v1/models` (abbreviated):", "", "```json",
            json.dumps(_abbreviate(identity.get("models")), indent=1, ensure_ascii=False), "```"]
