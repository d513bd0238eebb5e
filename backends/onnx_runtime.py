"""ONNX Runtime backend: one session, one host KV arena, batched decode.

Arena: per layer one K and one V array shaped [n_rows, kv_heads, row_len + 1, head_dim]
(the extra column takes dummy writes).  How a `forward` is run:

* Single-token steps go into one model call.  GQA layout: the call spans the contiguous
  rows [min_row, max_row] and binds that slice of the arena as both past and present, so
  the graph writes the new KV in place.  Rows in that span without a step are dummies:
  they get token 0 and write at their high-water mark (the end of the row's last write),
  which is never below the engine's `pos` for the row, so valid KV stays intact.
  Plain layout: only the stepping rows are gathered, right-padded, into a past batch; the
  new column of each present is copied back into the arena.
* Multi-token steps (prefill chunks, speculative verification) then run one B=1 call
  each on their row (GQA refuses S > 1 with B > 1 once a past exists).

`position_ids`, when the graph takes them, are the true positions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .base import Backend, KVState, Step
from .errors import BackendError, ModelLoadError, ProviderUnavailable
from .onnx_layouts import inspect, model_file, read_json

#: device name -> ONNX Runtime execution provider
DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}
_INSTALL_HINT = {
    "cuda": "Install onnxruntime-gpu (and not onnxruntime beside it) on a machine with a CUDA GPU.",
    "dml": "Install onnxruntime-directml (and not onnxruntime beside it) on Windows with a DirectX 12 GPU.",
}
DUMMY_TOKEN = 0
#: multi-token steps up to this length (speculative verification, short prompt chunks)
#: reuse their row's binding; longer ones bind afresh so no [S, vocab] buffer is kept
_KEEP_CHUNK_CALL = 64


def check_device(device: str) -> str:
    """The execution provider for `device`; raises if this onnxruntime build lacks it."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(DEVICES)}")
    provider = DEVICES[device]
    available = ort.get_available_providers()
    if provider not in available:
        raise ProviderUnavailable(
            f"--backend onnx-{device} needs the {provider}, which this onnxruntime "
            f"{ort.__version__} lacks (available: {', '.join(available)}). {_INSTALL_HINT[device]}")
    return provider


def create_session(path: Path, device: str, threads: int) -> ort.InferenceSession:
    """An InferenceSession on `device` with `threads` intra-op threads (0: every core)."""
    provider = check_device(device)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if device == "dml":  # DirectML supports neither memory patterns nor parallel execution
        opts.enable_mem_pattern = False
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [provider] if device == "cpu" else [provider, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own pybind11 exception types
        raise ModelLoadError(
            f"onnxruntime {ort.__version__} cannot load {path}: {exc}. Check that the file is a "
            "complete export and that its external .data file sits beside it") from exc
    if session.get_providers()[0] != provider:
        raise ProviderUnavailable(
            f"--backend onnx-{device}: the {provider} is installed but did not start "
            f"(session runs on {session.get_providers()}); check the GPU driver and runtime "
            f"libraries. {_INSTALL_HINT[device]}")
    return session


class _Call:
    """An IOBinding over the arena rows [lo, hi).

    The KV slices are bound once, as both past and present, so the graph writes new KV in
    place; `ids`, `mask`, `positions` and `logits` are rebound only when the call's shape
    (tokens per row, mask width) changes.  Binding 2 x n_layers KV values per call cost 7%
    of the engine thread on the speculative path, where shapes change every step.
    """

    def __init__(self, backend: OnnxBackend, lo: int, hi: int):
        self._spec, self._vocab = backend._spec, backend.info.vocab_size
        self.n = hi - lo
        self.binding = backend.session.io_binding()
        self._kv = []  # OrtValues over numpy memory must outlive the binding
        for (pk, pv), (ok, ov), k, v in zip(self._spec.past, self._spec.present, backend._k, backend._v):
            kv = ort.OrtValue.ortvalue_from_numpy(k[lo:hi])  # row slices of the arena: no copy
            vv = ort.OrtValue.ortvalue_from_numpy(v[lo:hi])
            self._kv += [kv, vv]
            self.binding.bind_ortvalue_input(pk, kv)
            self.binding.bind_ortvalue_input(pv, vv)
            self.binding.bind_ortvalue_output(ok, kv)
            self.binding.bind_ortvalue_output(ov, vv)
        self.shape: tuple[int, int] | None = None

    def reshape(self, seq: int, width: int) -> None:
        """Make the call take `seq` tokens per row and a `width`-column attention mask."""
        if self.shape == (seq, width):
            return
        spec, n = self._spec, self.n
        self.ids = np.zeros((n, seq), np.int64)
        self.mask = np.zeros((n, width), np.int64)
        self.positions = np.zeros((n, seq), np.int64)
        self.logits = np.empty((n, seq, self._vocab), spec.logits_dtype)
        self.columns = np.arange(width, dtype=np.int64)
        self._io = [ort.OrtValue.ortvalue_from_numpy(a) for a in (self.ids, self.mask, self.positions, self.logits)]
        self.binding.bind_ortvalue_input(spec.input_ids, self._io[0])
        self.binding.bind_ortvalue_input(spec.attention_mask, self._io[1])
        if spec.position_ids:
            self.binding.bind_ortvalue_input(spec.position_ids, self._io[2])
        self.binding.bind_ortvalue_output(spec.logits, self._io[3])
        self.shape = (seq, width)


class OnnxBackend(Backend):
    """A decoder-only ONNX model (GQA or plain layout) on one ONNX Runtime session."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu", threads: int = 0,
                 filename: str | None = None):
        check_device(device)  # before touching the model: the more basic problem
        model_dir = Path(model_dir)
        if model_dir.suffix == ".onnx" and model_dir.is_file():  # a graph file: its folder
            model_dir, filename = model_dir.parent, filename or model_dir.name
        genai = read_json(model_dir / "genai_config.json") if model_dir.is_dir() else {}
        path = model_file(model_dir, genai, filename)
        self.session = create_session(path, device, threads)
        self.info, self._spec = inspect(self.session, model_dir, path, genai, device)
        self.n_calls = 0
        self._smoke_test(path)
        self.allocate(0, 0)

    def _smoke_test(self, path: Path) -> None:
        """A 2-token prompt and one decode step on a scratch row, so that a graph this
        onnxruntime cannot execute (an op or type its provider lacks) fails at start-up
        rather than at the first request."""
        self.allocate(1, 4)
        try:
            self.forward([Step(0, 0, [DUMMY_TOKEN, DUMMY_TOKEN])])
            self.forward([Step(0, 2, [DUMMY_TOKEN])])
        except BackendError as exc:
            cause = str(exc.__cause__ or exc).strip().splitlines()[0][:500]
            raise ModelLoadError(
                f"onnxruntime {ort.__version__} loads {path} but cannot run it on {self.info.device} "
                f"({self.info.kv_dtype} KV, {self.info.layout} layout): {cause}. Export it for this "
                "device (for CPU: fp32 or int4, e.g. onnxruntime-genai's builder with -p int4 -e cpu)") from exc
        finally:
            self.n_calls = 0

    # ---- arena ---------------------------------------------------------------------------

    def allocate(self, n_rows: int, row_len: int) -> None:
        info = self.info
        shape = (n_rows, info.n_kv_heads, row_len + 1, info.head_dim)
        self._k = [np.zeros(shape, self._spec.kv_dtype) for _ in range(info.n_layers)]
        self._v = [np.zeros(shape, self._spec.kv_dtype) for _ in range(info.n_layers)]
        self.n_rows, self.row_len = n_rows, row_len
        self._high = np.zeros(n_rows, np.int64)  # per row: end of its last write
        self._calls: dict[tuple[int, int, bool], _Call] = {}
        # The widest attention mask a GQA call may use: the buffer length, and with RoPE
        # inside GQA also the cos/sin cache (context_length rows).
        self._width = row_len + 1
        if info.layout == "gqa" and not info.uses_position_ids:
            self._width = min(self._width, info.context_length)
        self._capacity = min(row_len, info.context_length)

    def save_row(self, row: int, length: int) -> KVState:
        self._check_rows(row, length=length)
        return KVState([k[row, :, :length].copy() for k in self._k],
                       [v[row, :, :length].copy() for v in self._v], length)

    def load_row(self, row: int, state: KVState) -> None:
        self._check_rows(row, length=state.length)
        n = state.length
        for k, v, sk, sv in zip(self._k, self._v, state.keys, state.values):
            k[row, :, :n] = sk[:, :n]  # numpy casts float32 <-> float16 as needed
            v[row, :, :n] = sv[:, :n]
        self._high[row] = n

    def close(self) -> None:
        self._calls = {}
        self._k = self._v = []
        self.session = None

    # ---- forward -------------------------------------------------------------------------

    def forward(self, steps: Sequence[Step]) -> list[np.ndarray]:
        self._check_steps(steps)
        out: list[np.ndarray | None] = [None] * len(steps)
        singles = {s.row: i for i, s in enumerate(steps) if len(s.tokens) == 1}
        if singles:
            if self.info.layout == "gqa":
                self._gqa_decode(steps, singles, out)
            else:
                self._plain_decode(steps, singles, out)
        for i, step in enumerate(steps):
            if len(step.tokens) > 1:
                logits = self._run_chunk(step)
                out[i] = logits.astype(np.float32) if step.all_logits else logits[-1:].astype(np.float32)
        return out

    def _gqa_decode(self, steps: Sequence[Step], singles: dict[int, int], out: list) -> None:
        for group, width in self._decode_groups(steps, singles):
            for lo, hi in self._spans(sorted(group), width):
                self._gqa_decode_span(steps, group, lo, hi, width, out)

    def _decode_groups(self, steps: Sequence[Step], singles: dict[int, int]) -> list[tuple[dict, int]]:
        """(rows, attention-mask width) of each decode call group.  A LongRoPE graph (Phi-3 /
        Phi-4 builder exports) takes the mask's width as the sequence length and switches to
        its long-factor RoPE cache past `rope_switch`, as transformers does past
        original_max_position_embeddings: rows still within it step apart, under a mask no wider."""
        switch = self._spec.rope_switch
        if not switch or self._width <= switch:
            return [(singles, self._width)]
        short = {r: i for r, i in singles.items() if steps[i].pos < switch}
        long = {r: i for r, i in singles.items() if steps[i].pos >= switch}
        return [(group, width) for group, width in ((short, switch), (long, self._width)) if group]

    def _gqa_decode_span(self, steps: Sequence[Step], singles: dict[int, int], lo: int, hi: int, width: int,
                         out: list) -> None:
        last_position = self.info.context_length - 1
        call = self._call(lo, hi, width=width)
        rows = [r for r in range(lo, hi) if r in singles]
        order = [singles[r] for r in rows]
        pos = np.array([steps[i].pos for i in order], np.int64)
        ids = [steps[i].tokens[0] for i in order]
        full = len(rows) == hi - lo
        if full:  # every row of the span steps (one stream; packed slots)
            sel = slice(None)
            totals = pos + 1
            call.positions[:, 0] = pos
            call.ids[:, 0] = ids
        else:  # dummies write where nothing valid can be: at the end of their last write
            sel = np.array(rows) - lo
            high = self._high[lo:hi]
            totals = high + 1
            totals[sel] = pos + 1
            call.positions[:, 0] = np.minimum(high, last_position)
            call.positions[sel, 0] = pos
            call.ids[:, 0] = DUMMY_TOKEN
            call.ids[sel, 0] = ids
        np.less(call.columns, totals[:, None], out=call.mask, casting="unsafe")
        self._run(call.binding, "decode of rows %d..%d", lo, hi - 1)
        logits = call.logits[sel].astype(np.float32)  # [n, 1, vocab], a copy
        for j, i in enumerate(order):
            out[i] = logits[j]
        if full:
            self._high[lo:hi] = totals
        else:
            self._high[rows] = totals[sel]

    def _spans(self, rows: list[int], width: int | None = None) -> list[tuple[int, int]]:
        """Contiguous row spans [lo, hi) covering the sorted `rows`, split at idle rows too
        full for a dummy write under a `width`-column mask (possible only when row_len reaches
        the RoPE cache length, or past a LongRoPE switch)."""
        width = width or self._width
        stepping = set(rows)
        spans, lo, last = [], rows[0], rows[0]
        for r in range(rows[0], rows[-1] + 1):
            if r in stepping:
                lo = r if lo is None else lo
                last = r
            elif lo is not None and self._high[r] >= width:
                spans.append((lo, last + 1))
                lo = None
        spans.append((lo, last + 1))
        return spans

    def _call(self, lo: int, hi: int, seq: int = 1, width: int = 0) -> _Call:
        """The binding of rows [lo, hi) for `seq`-token steps (decode: one per span;
        multi-token steps: one per row, reshaped as their length changes)."""
        key = (lo, hi, seq == 1, width if seq == 1 else 0)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _Call(self, lo, hi)
        call.reshape(seq, width or self._width)
        return call

    def _plain_decode(self, steps: Sequence[Step], singles: dict[int, int], out: list) -> None:
        spec, info = self._spec, self.info
        order = list(singles.values())
        rows = [steps[i].row for i in order]
        pos = np.array([steps[i].pos for i in order], np.int64)
        n, past_len = len(order), int(pos.max())
        feeds = {spec.input_ids: np.array([[steps[i].tokens[0]] for i in order], np.int64)}
        mask = (np.arange(past_len + 1) < pos[:, None]).astype(np.int64)
        mask[:, past_len] = 1
        feeds[spec.attention_mask] = mask
        feeds[spec.position_ids] = pos[:, None].copy()
        shape = (n, info.n_kv_heads, past_len, info.head_dim)
        for (pk, pv), k, v in zip(spec.past, self._k, self._v):
            past_k, past_v = np.zeros(shape, spec.kv_dtype), np.zeros(shape, spec.kv_dtype)
            for b, (r, p) in enumerate(zip(rows, pos)):
                past_k[b, :, :p] = k[r, :, :p]
                past_v[b, :, :p] = v[r, :, :p]
            feeds[pk], feeds[pv] = past_k, past_v
        results = self._run_plain(feeds, f"decode of rows {rows}")
        for b, (i, r, p) in enumerate(zip(order, rows, pos)):
            out[i] = results[0][b, -1:].astype(np.float32)
            for layer, (k, v) in enumerate(zip(self._k, self._v)):
                k[r, :, p] = results[1 + 2 * layer][b, :, past_len]
                v[r, :, p] = results[2 + 2 * layer][b, :, past_len]
            self._high[r] = p + 1

    def _run_chunk(self, step: Step) -> np.ndarray:
        """Logits [S, vocab] (graph dtype) of a multi-token step, run alone on its row."""
        r, p, n = step.row, step.pos, len(step.tokens)
        tokens = np.asarray(step.tokens, np.int64)
        if self.info.layout == "gqa":
            if n <= _KEEP_CHUNK_CALL:
                call = self._call(r, r + 1, n, p + n)
            else:  # a long prefill chunk: binding cost is nothing next to it; do not keep its buffers
                call = _Call(self, r, r + 1)
                call.reshape(n, p + n)
            call.ids[0] = tokens
            call.mask[:] = 1
            call.positions[0] = np.arange(p, p + n)
            self._run(call.binding, "%d-token step on row %d", n, r)
            logits = call.logits[0]
        else:
            spec = self._spec
            feeds = {spec.input_ids: tokens[None], spec.attention_mask: np.ones((1, p + n), np.int64),
                     spec.position_ids: np.arange(p, p + n, dtype=np.int64)[None]}
            for (pk, pv), k, v in zip(spec.past, self._k, self._v):
                feeds[pk] = np.ascontiguousarray(k[r:r + 1, :, :p])
                feeds[pv] = np.ascontiguousarray(v[r:r + 1, :, :p])
            results = self._run_plain(feeds, f"{n}-token step on row {r}")
            for layer, (k, v) in enumerate(zip(self._k, self._v)):
                k[r, :, p:p + n] = results[1 + 2 * layer][0, :, p:p + n]
                v[r, :, p:p + n] = results[2 + 2 * layer][0, :, p:p + n]
            logits = results[0][0]
        self._high[r] = p + n
        return logits

    def _run(self, binding, what: str, *args) -> None:
        """Run a bound call; `what % args` names it in the error (formatted only then: this
        runs once per token)."""
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime raises its own pybind11 exception types
            raise BackendError(f"onnxruntime failed on the {what % args}: {exc}") from exc
        self.n_calls += 1

    def _run_plain(self, feeds: dict, what: str) -> list[np.ndarray]:
        names = [self._spec.logits] + [name for pair in self._spec.present for name in pair]
        try:
            results = self.session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises its own pybind11 exception types
            raise BackendError(f"onnxruntime failed on the {what}: {exc}") from exc
        self.n_calls += 1
        return results

    # ---- checks --------------------------------------------------------------------------

    def _check_rows(self, *rows: int, length: int = 0) -> None:
        for r in rows:
            if not 0 <= r < self.n_rows:
                raise ValueError(f"row {r} is outside the arena of {self.n_rows} rows")
        if not 0 <= length <= self.row_len:
            raise ValueError(f"length {length} is outside a row of {self.row_len} positions")

    def _check_steps(self, steps: Sequence[Step]) -> None:
        seen = set()
        for s in steps:
            self._check_rows(s.row)
            if s.row in seen:
                raise ValueError(f"row {s.row} has two steps in one forward call")
            seen.add(s.row)
            if not s.tokens:
                raise ValueError(f"step for row {s.row} has no tokens")
            if s.pos < 0 or s.pos + len(s.tokens) > self._capacity:
                raise ValueError(
                    f"step for row {s.row} writes positions {s.pos}..{s.pos + len(s.tokens) - 1}, "
                    f"beyond the {self._capacity} a row holds (row_len {self.row_len}, "
                    f"context {self.info.context_length})")
