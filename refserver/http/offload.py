"""`off_loop`: a request's CPU work (decoding and validating a big body, tokenizing,
resolving logit_bias strings, rendering a template, compiling a grammar) runs on a small
worker pool, so the IOLoop keeps answering `/health` and writing other streams meanwhile.

The workers still share the GIL with the loop.  Python hands it over every few
milliseconds, but only between bytecodes: C code keeps it for as long as it runs.  So the
tokenizer takes long texts through `encode_batch` (which releases it), and request bodies
are parsed by `loads_yielding`.  The loop's worst stall while a heavy request runs is
measured by `python -m bench.loop_latency`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Several workers, so that a slow grammar compilation does not hold up the next request's
# body parsing; more would only contend for the GIL.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="refserver-work")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a worker thread; its result or exception comes back here."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args, **kwargs))


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


def _object(pairs: list) -> dict:
    out = {}
    for key, value in pairs:  # a loop, not dict(pairs): one C call over 200k keys holds the GIL
        out[key] = value
    return out


def loads_yielding(text: str, parse_constant: Callable[[str], Any]) -> Any:
    """json.loads whose C scanner calls back into Python at every number and object, so that
    parsing a big body (200k logit_bias keys: ~1 s) hands the GIL to the loop every few
    milliseconds instead of holding it throughout; ~20% slower than plain json.loads."""
    return json.loads(text, parse_float=_float, parse_int=_int, object_pairs_hook=_object,
                      parse_constant=parse_constant)
