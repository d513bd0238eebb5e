"""Where the shared models live, and a marker for tests that need them.

The `shared` folder sits beside the repository (../shared) and holds models too large
for git; set REFSERVER_SHARED to use another copy.  Tests that need it are marked
`@needs_shared` and skip cleanly where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_dir() -> Path:
    """The `shared` folder: $REFSERVER_SHARED, else the one beside the repository."""
    env = os.environ.get("REFSERVER_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


def stories260k_dir() -> Path:
    """stories260K: hf/, onnx-plain/, onnx-genai/ and verification.json."""
    return shared_dir() / "models" / "stories260K"


needs_shared = pytest.mark.skipif(
    not (stories260k_dir() / "verification.json").is_file(),
    reason=f"shared models not found at {stories260k_dir()} (set REFSERVER_SHARED)")
