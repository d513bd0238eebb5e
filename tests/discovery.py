"""What an external target offers: the contract's layers and the optional routes, probed once.

The suite checks three layers (CONTRACT §0), one `profile` each: `openai` (what OpenAI's API
reference documents), `llamacpp` (llama.cpp's native routes and its extensions on /v1/*) and
`refserver` (refserver's own choices).  Against a server the suite does not start
(`--server-url`) it probes the routes below once, before the first test; a layer or route the
target lacks makes the tests that need it skip with the probe's answer as the reason, instead
of failing.  A server the harness starts itself (refserver, or `--server-bin`) is known to
offer everything, so nothing is probed.

A route counts as offered when the probe gets an answer other than 404/405 (absent) or 501
(disabled by a flag, llama.cpp's way).  The llama.cpp probes send valid requests and need a
200 with llama.cpp's shape, since other servers have same-named routes with other bodies (vLLM's
/tokenize wants `prompt`); /v1/responses and /v1/messages get an empty body, and any 4xx other
than 404/405 means the route exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

#: name -> (method, path, body, shape check on a 200 body or None when any non-absent status counts)
PROBES: dict[str, tuple[str, str, Any, Any]] = {
    "props": ("GET", "/props", None, lambda b: isinstance(b, dict) and "default_generation_settings" in b),
    "completion": ("POST", "/completion", {"prompt": "a", "n_predict": 1},
                   lambda b: isinstance(b, dict) and "content" in b),
    "tokenize": ("POST", "/tokenize", {"content": "a"}, lambda b: isinstance(b, dict) and "tokens" in b),
    "apply_template": ("POST", "/apply-template", {"messages": [{"role": "user", "content": "a"}]},
                       lambda b: isinstance(b, dict) and "prompt" in b),
    "slots": ("GET", "/slots", None, lambda b: isinstance(b, list)),
    # llama.cpp's metric names (any prefix: llamacpp:, or refserver: before CONTRACT §0's rename)
    "metrics": ("GET", "/metrics", None, lambda b: isinstance(b, str) and "tokens_predicted_total" in b),
    "responses": ("POST", "/v1/responses", {}, None),
    "messages": ("POST", "/v1/messages", {}, None),
}

#: a route prefix -> the capability a request to it needs (longest prefix first)
ROUTE_CAPABILITY: tuple[tuple[str, str], ...] = (
    ("/v1/responses", "responses"), ("/v1/messages", "messages"),
    ("/props", "props"), ("/completions", "completion"), ("/completion", "completion"),
    ("/tokenize", "tokenize"), ("/detokenize", "tokenize"), ("/apply-template", "apply_template"),
    ("/slots", "slots"), ("/metrics", "metrics"), ("/infill", "completion"),
)

#: a layer -> the capability that decides whether the target offers it (None: always offered)
LAYER_CAPABILITY: dict[str, str | None] = {"openai": None, "llamacpp": "props", "refserver": "refserver"}


@dataclass
class Discovery:
    """The probes' results: capability -> (offered, what the probe got)."""

    found: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def offers(self, capability: str) -> bool:
        return self.found.get(capability, (True, ""))[0]

    def why_absent(self, capability: str) -> str:
        return self.found.get(capability, (True, ""))[1]

    def layer_absent(self, layer: str) -> str | None:
        """None when the target offers `layer`, else the reason (for a skip message)."""
        cap = LAYER_CAPABILITY[layer]
        if cap is None or self.offers(cap):
            return None
        return f"the target does not offer the {layer} layer ({self.why_absent(cap)})"


def capability_of(path: str) -> str | None:
    """The optional capability a request path needs, None for the OpenAI routes."""
    path = path.split("?", 1)[0]
    for prefix, cap in ROUTE_CAPABILITY:
        if path == prefix or path.startswith(prefix + "/"):
            return cap
    return None


def _probe(base: str, headers: dict, method: str, path: str, body: Any, check) -> tuple[bool, str]:
    try:
        r = requests.request(method, base + path, json=body, headers=headers, timeout=30)
    except requests.RequestException as exc:
        return False, f"{method} {path} failed: {type(exc).__name__}"
    said = f"{method} {path} -> {r.status_code}"
    if r.status_code in (404, 405):
        return False, said
    if r.status_code == 501:
        return False, said + " (disabled on this server)"
    if check is None:
        return True, said
    if r.status_code != 200:
        return False, said
    try:
        ok = check(r.json())
    except ValueError:
        ok = check(r.text)
    return (True, said) if ok else (False, said + " without llama.cpp's fields")


def probe(base: str, headers: dict | None = None) -> Discovery:
    """Probe every capability of the server at `base`; also whether it is refserver (its
    `Server` header), which decides the `refserver` layer."""
    headers = headers or {}
    found = {name: _probe(base, headers, *spec) for name, spec in PROBES.items()}
    try:
        server = requests.get(base + "/health", headers=headers, timeout=10).headers.get("Server", "")
    except requests.RequestException:
        server = ""
    found["refserver"] = (server.startswith("refserver"), f"GET /health answers with Server: {server or '(none)'}")
    return Discovery(found)
