"""Response ids: `chatcmpl-` / `cmpl-` plus 32 alphanumeric characters, as OpenAI's."""

from __future__ import annotations

import secrets
import string

_ALNUM = string.ascii_letters + string.digits


def completion_id(prefix: str) -> str:
    """`chatcmpl-` / `cmpl-` plus 32 alphanumeric characters."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(32))
