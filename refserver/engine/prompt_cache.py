"""Cross-slot LRU prompt cache: saved KV states keyed by token prefix (a trie).

Any slot can start from KV that another slot computed (a shared system prompt, the
previous turn of a chat).  Entries are bounded by count and bytes; eviction is
type-aware: "assistant" entries (whole prompt+output, cheap to lose) go before "system"
ones (a chat prompt's leading system messages, shared by many conversations); FIFO within
a kind.  A lookup does not refresh an
entry, re-inserting it does.  Values only need `.length`, `.nbytes` and
`.trimmed(n)` (a `KVState`, or the engine's main+draft pair).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

KINDS = ("assistant", "system")  # eviction order


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    entry: _Entry | None = None
    n_below: int = 0  # entries in this subtree, this node included


@dataclass
class _Entry:
    key: tuple[int, ...]
    value: Any
    kind: str
    nbytes: int


class PromptCache:
    def __init__(self, max_entries: int = 10, max_bytes: int = 256 << 20):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.root = _Node()
        self.queues: dict[str, OrderedDict[tuple[int, ...], _Entry]] = {k: OrderedDict() for k in KINDS}
        self.nbytes = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    # ------------------------------------------------------------------ trie helpers
    def _path(self, key: Sequence[int]) -> list[_Node]:
        nodes = [self.root]
        for t in key:
            nxt = nodes[-1].children.get(t)
            if nxt is None:
                break
            nodes.append(nxt)
        return nodes

    def _remove(self, entry: _Entry) -> None:
        nodes = self._path(entry.key)
        if len(nodes) != len(entry.key) + 1 or nodes[-1].entry is not entry:
            return
        nodes[-1].entry = None
        for n in nodes:
            n.n_below -= 1
        for depth in range(len(entry.key), 0, -1):  # prune empty branches
            if nodes[depth].n_below == 0:
                del nodes[depth - 1].children[entry.key[depth - 1]]
            else:
                break
        self.queues[entry.kind].pop(entry.key, None)
        self.nbytes -= entry.nbytes

    # ------------------------------------------------------------------ public
    def insert(self, tokens: Sequence[int], value: Any, kind: str = "assistant") -> None:
        """Store `value` (KV of exactly `tokens`); replaces an entry with the same key.
        Shorter entries of the same or a less durable kind on this path are dropped:
        this entry can serve them by trimming."""
        if not tokens or kind not in KINDS:
            return
        key = tuple(int(t) for t in tokens)
        nodes = self._path(key)
        for n in nodes:
            old = n.entry
            if old is not None and (old.key == key or KINDS.index(old.kind) <= KINDS.index(kind)):
                self._remove(old)
        node = self.root
        path = [node]
        for t in key:
            node = node.children.setdefault(t, _Node())
            path.append(node)
        entry = _Entry(key, value, kind, int(getattr(value, "nbytes", 0)))
        node.entry = entry
        for n in path:
            n.n_below += 1
        self.queues[kind][key] = entry
        self.nbytes += entry.nbytes
        self._evict()

    def _evict(self) -> None:
        while len(self) > self.max_entries or (self.max_bytes > 0 and self.nbytes > self.max_bytes):
            for kind in KINDS:
                if self.queues[kind]:
                    self._remove(next(iter(self.queues[kind].values())))
                    break
            else:
                return

    def lookup(self, tokens: Sequence[int]) -> tuple[int, Any]:
        """(n, value trimmed to n) for the longest cached prefix of `tokens`, n <= len-1
        so at least one token is left to evaluate; (0, None) on a miss."""
        limit = len(tokens) - 1
        if limit <= 0:
            return 0, None
        nodes = self._path(tokens[:limit])
        for depth in range(len(nodes) - 1, 0, -1):
            node = nodes[depth]
            if node.n_below == 0:
                continue
            entry = node.entry or self._any_below(node)
            if entry is None:
                continue
            value = entry.value if entry.value.length == depth else entry.value.trimmed(depth)
            return depth, value
        return 0, None

    def _any_below(self, node: _Node) -> _Entry | None:
        """The shortest entry under `node` (least to trim)."""
        frontier = [node]
        while frontier:
            nxt = []
            for n in frontier:
                if n.entry is not None:
                    return n.entry
                nxt.extend(n.children.values())
            frontier = nxt
        return None
