"""Stored Responses (`store: true`): a bounded in-memory LRU, read and written on the IOLoop.

An entry keeps what `GET /v1/responses/{id}` and `/input_items` return, and the chat
messages of its conversation (the chain's history, this input and this output) that a
later request's `previous_response_id` continues.  A background response's entry also
holds its run (`response_runs.BackgroundRun`), which answers for it.  The least recently
used entry goes first when `--responses-store-size` is reached (a background response is
kept while it runs); a restart forgets everything.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from refserver.errors import NotFound


@dataclass
class StoredResponse:
    response: dict
    input_items: list[dict]
    messages: list[dict]
    run: Any = None  # a background response's BackgroundRun (its events, cancel); None otherwise

    def current(self) -> dict:
        """The response object as it is now (a background run's own, as it generates)."""
        return self.run.response() if self.run is not None else self.response


class ResponseStore:
    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def put(self, entry: StoredResponse) -> None:
        if self.size <= 0:
            return
        rid = entry.response["id"]
        self._entries[rid] = entry
        self._entries.move_to_end(rid)
        while len(self._entries) > self.size:
            # the least recently used entry that is not a background response still running
            # (one that could then no longer be polled or cancelled): those wait until they end
            old = next((k for k, e in self._entries.items() if e.run is None or e.run.done), None)
            if old is None:
                return
            del self._entries[old]

    def get(self, rid: str) -> StoredResponse:
        entry = self._entries.get(rid)
        if entry is None:
            raise NotFound(f"Response with id '{rid}' not found (never stored, deleted, or evicted from the "
                           f"{self.size}-entry store)")
        self._entries.move_to_end(rid)
        return entry

    def delete(self, rid: str) -> None:
        self.get(rid)
        del self._entries[rid]

    def __len__(self) -> int:
        return len(self._entries)
