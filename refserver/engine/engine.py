"""The engine: one thread, a FIFO of requests, and a step loop over the slots.

Continuous batching: every step makes ONE `backend.forward` call holding a one-token
decode step (or a speculative verify step) for each generating slot plus a prompt chunk
(<= n_batch tokens) for each slot still pre-filling, so a long prompt never stalls the
others.  Events go to each request's sink from this thread.  No tornado, no asyncio:
the HTTP layer hops back to its own loop inside the sink.

Context (llama.cpp's unified KV): `n_ctx` is the budget of tokens all slots hold at
once, and each slot may grow up to the smaller of `n_ctx` and the model's trained
context.  A request is admitted when its prompt fits in what the busy slots leave free
(else it waits); a slot that would grow past the budget ends as if its context were full.

A failure while serving one request (sampling, emitting, admitting it) fails that request
alone and frees its slot.  Should the loop itself die, every request in flight fails, and
`alive` turns False and the callbacks given to `watch` run, so the server can stop.
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backends.base import Backend, KVState, Step
from refserver import errors
from refserver.engine.budget import BudgetState
from refserver.engine.constraints import ConstraintCompiler
from refserver.engine.dry import BreakerTable, VocabularyIndex, breaker_table
from refserver.engine.prompt_cache import PromptCache
from refserver.engine.sampling import Sampled, Sampler, finite, log_softmax, top_logprobs
from refserver.engine.slots import RequestHandle, Slot, Task, common_prefix
from refserver.engine.speculative import Drafter, DraftWant, verify
from refserver.engine.textstream import TextStream
from refserver.engine.types import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    Progress,
    PromptProbs,
    SpeculativeParams,
    TokenOut,
    TokenProb,
    TokenProbs,
)
from refserver.tokenizer import TextTokenizer

log = logging.getLogger("refserver.engine")


@dataclass
class EngineConfig:
    n_slots: int = 1
    n_ctx: int = 0  # total context of all slots (0: the model's context_length)
    kv_unified: bool = True  # slots share n_ctx; False: each gets n_ctx // n_slots
    n_batch: int = 2048  # max prompt tokens per step per slot (chunked prefill)
    n_predict: int = -1  # for requests that give none (-n); -1 = until EOS or the context is full
    seed: int = -1
    cache_ram_mib: int = 256  # cross-slot prompt cache byte bound (0 disables)
    prompt_cache_size: int = 10
    draft_max: int = 16
    draft_min: int = 0
    draft_p_min: float = 0.75
    max_queue: int = 0
    context_shift: bool = False  # a full slot drops old tokens and goes on (llama.cpp's --context-shift)
    inject_fault: bool = False  # tests only: the loop dies when it first has work


def banned_tokens(sampling, eog: frozenset[int] | set[int]) -> tuple[int, ...]:
    """Tokens a request can never sample: -inf biases, and end-of-generation with ignore_eos."""
    banned = {t for t, b in sampling.logit_bias if b == float("-inf")}
    if sampling.ignore_eos:
        banned |= set(eog)
    return tuple(sorted(banned))


@dataclass
class CachedKV:
    """A prompt-cache value: main KV plus, when a draft is loaded, the draft's."""

    main: KVState
    draft: KVState | None = None

    @property
    def length(self) -> int:
        return self.main.length

    @property
    def nbytes(self) -> int:
        return self.main.nbytes + (self.draft.nbytes if self.draft else 0)

    def trimmed(self, n: int) -> CachedKV:
        return CachedKV(self.main.trimmed(n), self.draft.trimmed(n) if self.draft else None)


class Engine:
    def __init__(self, backend: Backend, tokenizer: TextTokenizer, config: EngineConfig,
                 draft: Backend | None = None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.draft_backend = draft
        self.vocab_size = backend.info.vocab_size
        n_slots = max(1, config.n_slots)
        trained = backend.info.context_length
        n_ctx = config.n_ctx if config.n_ctx > 0 else trained
        per_slot = n_ctx if config.kv_unified else n_ctx // n_slots
        self._n_ctx_slot = max(1, min(per_slot, trained) if trained > 0 else per_slot)
        self.n_ctx_total = min(n_ctx, n_slots * self._n_ctx_slot)
        # The budget binds only when the slots together could hold more than it.
        self._shared = self.n_ctx_total < n_slots * self._n_ctx_slot
        self.slots_ = [Slot(i) for i in range(n_slots)]
        self.eog = frozenset(tokenizer.eog_ids)
        self.prompt_cache = (PromptCache(config.prompt_cache_size, config.cache_ram_mib << 20)
                             if config.cache_ram_mib > 0 and config.prompt_cache_size > 0 else None)
        self.constraints = ConstraintCompiler(tokenizer, self.vocab_size)
        self.drafter: Drafter | None = None
        self._lock = threading.Condition()
        self._queue: deque[Task] = deque()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failure: BaseException | None = None  # what ended the loop, if not shutdown()
        self._watchers: list[Callable[[BaseException], None]] = []
        self._tick = 0
        self._finished_rows: list[tuple[Slot, int]] = []  # (slot, cached length) to save after a step
        self._stats = {"n_steps": 0, "n_decode_total": 0, "prompt_tokens_total": 0, "prompt_tokens_seconds": 0.0,
                           "tokens_predicted_total": 0, "tokens_predicted_seconds": 0.0, "prompt_tokens_cache_total": 0,
                           # for routers: prompt tokens looked up in the caches, busy slots summed over steps,
                           # the longest sequence a slot held
                           "prompt_tokens_queried_total": 0, "n_busy_slots_total": 0, "n_tokens_max": 0}

    # ------------------------------------------------------------------ public API
    @property
    def n_ctx_slot(self) -> int:
        return self._n_ctx_slot

    @property
    def kv_bytes(self) -> int:
        """Bytes of the main model's KV arena (one row of n_ctx_slot + 1 positions per slot)."""
        info = self.backend.info
        per_position = 2 * info.n_layers * info.n_kv_heads * info.head_dim * np.dtype(info.kv_dtype).itemsize
        return per_position * len(self.slots_) * (self._n_ctx_slot + 1)

    def start(self) -> None:
        self.backend.allocate(len(self.slots_), self._n_ctx_slot)
        if self.draft_backend is not None:
            self.drafter = Drafter(self.draft_backend, len(self.slots_), self._n_ctx_slot, self.config.n_batch)
        self._thread = threading.Thread(target=self._run, name="refserver-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the engine thread still serves requests."""
        return self._thread is not None and self._thread.is_alive() and self.failure is None

    def watch(self, callback: Callable[[BaseException], None]) -> None:
        """Call `callback(error)` (on the engine thread, or now if it already happened)
        when the loop dies of an error."""
        with self._lock:
            failure = self.failure
            if failure is None:
                self._watchers.append(callback)
        if failure is not None:
            callback(failure)

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        else:  # never started: fail what was queued
            self._fail_all(errors.Unavailable("server is shutting down"))

    @functools.cached_property
    def _vocabulary(self) -> VocabularyIndex:
        return VocabularyIndex(self.tokenizer.pieces)

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one engine per server, kept for its lifetime
    def _dry_breakers(self, strings: tuple[str, ...]) -> BreakerTable:
        """DRY's breaker strings located in the vocabulary (cached: requests mostly send the
        same few lists)."""
        tok = self.tokenizer
        return breaker_table(strings, self._vocabulary, lambda text: tok.encode(text, parse_special=False))

    def submit(self, request: GenerationRequest, sink: Callable[[Event], None]) -> RequestHandle:
        prompt = request.prompt
        if not prompt:
            raise errors.InvalidRequest("the prompt is empty")
        if any(not 0 <= t < self.vocab_size for t in prompt):
            raise errors.InvalidRequest("the prompt contains an invalid token id")
        if len(prompt) >= self._n_ctx_slot:
            raise errors.ContextExceeded(len(prompt), self._n_ctx_slot)
        if request.id_slot >= len(self.slots_) or request.id_slot < -1:
            raise errors.InvalidRequest(f"id_slot {request.id_slot} is out of range")
        constraint = self.constraints.compile(request.constraint) if request.constraint else None
        s = request.sampling
        seed = s.seed if s.seed != -1 else self.config.seed if self.config.seed != -1 else secrets.randbits(32)
        breakers = self._dry_breakers(s.dry_sequence_breakers) if s.dry_multiplier else None
        sampler = Sampler(s, self.vocab_size, self.eog, seed, history=prompt, dry_breakers=breakers)
        spec = None
        if self.draft_backend is not None and constraint is None and not sampler.stateful and not request.budget:
            spec = request.speculative or SpeculativeParams(self.config.draft_max, self.config.draft_min,
                                                            self.config.draft_p_min)
            if spec.n_max <= 0:
                spec = None
        task = Task(RequestHandle(next(self._ids)), request, sink, sampler, TextStream(request.stop),
                    self.n_predict_for(request), seed, constraint, spec,
                    budget=BudgetState(request.budget) if request.budget else None)
        with self._lock:
            if self._stopping:
                raise errors.Unavailable("server is shutting down")
            if self.config.max_queue and len(self._queue) >= self.config.max_queue:
                raise errors.Unavailable("the request queue is full", retry_after=1)
            self._queue.append(task)
            self._lock.notify_all()
        return task.handle

    def n_predict_for(self, request: GenerationRequest) -> int:
        """The request's own n_predict, else the server's -n (llama.cpp's current rule: -n
        is a default, not a cap); -1 means until EOS or the slot's context is full."""
        return self.config.n_predict if request.n_predict is None else request.n_predict

    def slots(self) -> list[dict]:
        out = []
        for slot in self.slots_:
            task = slot.task
            d = {"id": slot.id, "id_task": task.handle.id if task else -1, "n_ctx": self._n_ctx_slot,
                 "speculative": self.draft_backend is not None, "is_processing": task is not None,
                 "prompt_tokens_cached": len(slot.cache)}
            if task is not None:
                s = task.request.sampling
                d["params"] = {"n_predict": task.n_predict, "seed": task.seed, "temperature": s.temperature,
                               "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p,
                               "stop": list(task.request.stop), "ignore_eos": s.ignore_eos}
                remain = task.n_predict - task.n_decoded if task.n_predict >= 0 else -1
                d["next_token"] = [{"has_next_token": True, "n_remain": remain, "n_decoded": task.n_decoded}]
            else:  # a list, as llama.cpp's (one entry per sequence of the slot)
                d["next_token"] = [{"has_next_token": False, "n_remain": -1, "n_decoded": 0}]
            out.append(d)
        return out

    def stats(self) -> dict:
        busy = [s for s in self.slots_ if s.busy]
        with self._lock:
            deferred = len(self._queue)
        cache = self.prompt_cache
        return dict(self._stats, n_model_calls=self.backend.n_calls, requests_processing=len(busy),
                    requests_deferred=deferred, n_busy_slots=len(busy),
                    kv_cache_tokens=sum(len(s.cache) for s in busy),
                    kv_cache_capacity=self.n_ctx_total,
                    prompt_cache_entries=len(cache) if cache is not None else 0,
                    prompt_cache_bytes=cache.nbytes if cache is not None else 0)

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stopping and not self._queue and not any(s.busy for s in self.slots_):
                        self._lock.wait()
                    if self._stopping:
                        break
                self._drop_cancelled()
                self._assign()
                if any(s.busy for s in self.slots_):
                    if self.config.inject_fault:
                        raise RuntimeError("injected engine fault (REFSERVER_INJECT_ENGINE_FAULT)")
                    self._step()
                else:
                    with self._lock:  # only tasks waiting on a busy id_slot: impossible, but never spin
                        if self._queue and not self._stopping:
                            self._lock.wait(0.01)
        except BaseException as exc:  # a bug: fail everything rather than hang clients, and say so
            log.exception("engine loop crashed")
            with self._lock:
                self.failure = exc
                watchers, self._watchers = self._watchers, []
            for callback in watchers:
                callback(exc)
        finally:
            self._fail_all(errors.Unavailable("server is shutting down"))

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            self._stopping = True
            queued, self._queue = list(self._queue), deque()
        for slot in self.slots_:
            if slot.task is not None:
                self._send(slot.task, Failed(error))
                slot.task = None
        for task in queued:
            self._send(task, Failed(error))

    def _send(self, task: Task, event: Event) -> None:
        try:
            task.sink(event)
        except Exception:
            log.exception("request %d: sink raised; cancelling", task.handle.id)
            task.handle.cancel()

    def _drop_cancelled(self) -> None:
        with self._lock:
            if any(t.handle.cancelled for t in self._queue):
                self._queue = deque(t for t in self._queue if not t.handle.cancelled)
        for slot in self.slots_:
            if slot.task is not None and slot.task.handle.cancelled:
                self._release(slot)

    def _fail_task(self, slot: Slot, task: Task, exc: Exception, what: str = "generation failed") -> None:
        """End one request with a 500 after `exc`; its slot's KV is dropped (it may be
        half-written) and the slot freed."""
        log.error("request %d: %s", task.handle.id, what, exc_info=exc)
        if slot.task is task:
            slot.cache = []
            if self.drafter is not None:
                self.drafter.tokens[slot.id] = []
            self._release(slot)
        self._send(task, Failed(errors.ServerError(f"{what}: {type(exc).__name__}: {exc}")))

    def _release(self, slot: Slot) -> None:
        slot.task = None
        self._tick += 1
        slot.last_used = self._tick

    # ------------------------------------------------------------------ admission
    def _assign(self) -> None:
        with self._lock:
            if not self._queue:
                return
            queue = list(self._queue)
        taken = []
        in_use = self._tokens_in_use() if self._shared else 0
        for task in queue:
            idle = [s for s in self.slots_ if not s.busy]
            if not idle:
                break
            if self._shared and in_use + len(task.prompt) >= self.n_ctx_total:
                break  # waits (first in, first out) until running requests free enough context
            if task.request.id_slot >= 0:
                slot = self.slots_[task.request.id_slot]
                if slot.busy:
                    continue
            else:
                slot = self._pick_slot(idle, task.prompt)
            taken.append(task)
            try:
                self._begin(task, slot)
            except Exception as exc:  # noqa: BLE001 - e.g. loading a cached prefix; logged by _fail_task
                slot.task = task
                self._fail_task(slot, task, exc)
            else:
                in_use += len(task.prompt)
        if taken:
            with self._lock:
                self._queue = deque(t for t in self._queue if all(t is not x for x in taken))

    def _tokens_in_use(self, exclude: Slot | None = None) -> int:
        """Context the busy slots hold or were promised: a pre-filling slot its whole
        prompt, a generating one its cache plus the sampled token still to be written."""
        return sum(len(s.cache) + len(s.task.refill) + 1 if s.task.generating else len(s.task.prompt)
                   for s in self.slots_ if s.task is not None and s is not exclude)

    def _context_full(self, slot: Slot) -> bool:
        """Whether `slot` may not write its newest token: llama.cpp stops when prompt +
        generated tokens reach the slot's context, or here the shared budget."""
        need = len(slot.cache) + 1
        return need >= self._n_ctx_slot or self._shared and self._tokens_in_use(slot) + need >= self.n_ctx_total

    def _pick_slot(self, idle: list[Slot], prompt: list[int]) -> Slot:
        """The idle slot whose cache shares the longest prefix with `prompt`, least recently
        used first, when that prefix is at least 10% of the prompt (llama.cpp's default
        slot similarity).  Otherwise the lowest free slot: busy slots then stay packed at
        the start of the arena, and a batched decode call, which spans the rows from the
        first busy slot to the last, computes no idle rows between them (the cross-slot
        prompt cache keeps what the reused slot held)."""
        best = max(idle, key=lambda s: (common_prefix(s.cache, prompt), -s.last_used))
        if common_prefix(best.cache, prompt) < max(2, 0.1 * len(prompt)):
            return min(idle, key=lambda s: s.id)
        return best

    def _begin(self, task: Task, slot: Slot) -> None:
        prompt = task.prompt
        own = min(common_prefix(slot.cache, prompt), len(prompt) - 1) if task.request.cache_prompt else 0
        if task.request.cache_prompt and self.prompt_cache is not None:
            n, value = self.prompt_cache.lookup(prompt)
            if n > own:
                self.backend.load_row(slot.id, value.main)
                slot.cache = list(prompt[:n])
                own = n
                if self.drafter is not None and value.draft is not None:
                    self.draft_backend.load_row(slot.id, value.draft)
                    self.drafter.tokens[slot.id] = list(prompt[:value.draft.length])
        slot.cache = slot.cache[:own]
        if self.drafter is not None:
            dt = self.drafter.tokens[slot.id]
            self.drafter.tokens[slot.id] = dt[:min(common_prefix(dt, prompt), own)]
        slot.task = task
        task.handle.id_slot = slot.id
        task.n_cached = task.next_idx = own
        task.t_start = time.perf_counter()
        self._stats["prompt_tokens_cache_total"] += own
        self._stats["prompt_tokens_queried_total"] += len(prompt)
        if task.request.return_progress:
            self._send(task, Progress(len(prompt), own, own, 0.0))

    # ------------------------------------------------------------------ one step
    def _step(self) -> None:
        active = [s for s in self.slots_ if s.task is not None]
        drafts = self._propose(active)
        steps: list[Step] = []
        before: dict[int, list[int]] = {}
        for slot in active:
            task = slot.task
            pos = len(slot.cache)
            if task.refill:
                steps.append(Step(slot.id, pos, task.refill[: self.config.n_batch]))
                before[slot.id] = list(slot.cache)
            elif task.generating:
                d = drafts.get(slot.id, [])
                steps.append(Step(slot.id, pos, [task.pending] + d, all_logits=bool(d)))
            else:
                chunk = task.prompt[task.next_idx: task.next_idx + self.config.n_batch]
                steps.append(Step(slot.id, pos, list(chunk), all_logits=task.request.prompt_logprobs))
                before[slot.id] = list(slot.cache)
        t0 = time.perf_counter()
        try:
            logits = self.backend.forward(steps)
        except Exception as exc:  # noqa: BLE001 - a runtime failure ends the requests in this step only
            for slot in active:
                self._fail_task(slot, slot.task, exc, "model step failed")
            return
        dt = time.perf_counter() - t0
        self._stats["n_steps"] += 1
        self._stats["n_decode_total"] += 1
        self._stats["n_busy_slots_total"] += len(active)
        if self.drafter is not None:
            pre = [s for s in steps if s.row in before and self.slots_[s.row].task.spec is not None]
            self.drafter.mirror(pre, before)
        n_prompt = sum(len(s.tokens) for s in steps if s.row in before) if before else 0
        n_gen = len(steps) - len(before)
        if n_prompt:
            self._stats["prompt_tokens_seconds"] += dt * n_prompt / (n_prompt + n_gen)
        if n_gen:
            self._stats["tokens_predicted_seconds"] += dt * n_gen / (n_prompt + n_gen)
        for slot, step, lg in zip(active, steps, logits):
            task = slot.task
            if task is None:
                continue
            try:
                if task.refill:
                    slot.cache.extend(step.tokens)
                    del task.refill[: len(step.tokens)]
                elif step.row in before:
                    self._after_prefill(slot, task, step, lg)
                elif step.all_logits:
                    self._after_verify(slot, task, step, lg)
                else:
                    slot.cache.append(task.pending)
                    self._generate(slot, task, lg[-1])
            except Exception as exc:  # noqa: BLE001 - one request's failure ends that request only
                self._fail_task(slot, task, exc)
        # The prompt-cache copies of the requests that finished in this step, once every
        # event of the step is out: each takes 0.3-3 ms (page faults on fresh buffers) that
        # neither their clients nor the other rows' need wait for.  Their slots are free,
        # but admission, which could overwrite them, runs after this.
        self._stats["n_tokens_max"] = max(self._stats["n_tokens_max"], *(len(s.cache) for s in active))
        for slot, n in self._finished_rows:
            self._cache_insert(slot, n, "assistant")
        self._finished_rows.clear()

    def _propose(self, active: list[Slot]) -> dict[int, list[int]]:
        if self.drafter is None:
            return {}
        wants = []
        for slot in active:
            task = slot.task
            if not task.generating or task.spec is None or task.refill:
                continue
            room = self._n_ctx_slot - len(slot.cache) - 1
            if self._shared:
                room = min(room, self.n_ctx_total - self._tokens_in_use() - 1)
            limit = task.spec.n_max if task.n_predict < 0 else min(task.spec.n_max, task.n_predict - task.n_decoded)
            limit = min(limit, room)
            if limit > 0:
                wants.append(DraftWant(slot.id, slot.cache + [task.pending], limit, task.spec.p_min,
                                       banned_tokens(task.request.sampling, self.eog)))
        if not wants:
            return {}
        try:
            out = self.drafter.propose(wants)
        except Exception:
            log.exception("draft model failed; continuing without drafts")
            for w in wants:
                self.drafter.tokens[w.row] = []
            return {}
        for w in wants:
            spec = self.slots_[w.row].task.spec
            if len(out[w.row]) < max(spec.n_min, 1):
                out[w.row] = []
        return out

    def _after_prefill(self, slot: Slot, task: Task, step: Step, lg: np.ndarray) -> None:
        if task.request.prompt_logprobs:
            self._prompt_probs(task, step, lg)
        slot.cache.extend(step.tokens)
        task.next_idx += len(step.tokens)
        self._stats["prompt_tokens_total"] += len(step.tokens)
        now = time.perf_counter()
        total = len(task.prompt)
        if task.request.return_progress:
            self._send(task, Progress(total, task.n_cached, task.next_idx, (now - task.t_start) * 1000.0))
        if task.next_idx < total:
            return
        task.t_prompt_done = now
        if task.request.prompt_logprobs:
            self._send(task, PromptProbs(tuple(task.prompt_probs)))
        self._save_checkpoints(slot, task)
        if task.n_predict == 0:
            self._finish(slot, task, "limit")
            return
        self._generate(slot, task, lg[-1])

    def _after_verify(self, slot: Slot, task: Task, step: Step, lg: np.ndarray) -> None:
        drafts = step.tokens[1:]
        results = verify(task.sampler, lg, drafts)
        n_acc = sum(1 for r in results if r.from_draft)
        task.draft_n += len(drafts)
        task.draft_accepted += n_acc
        slot.cache.extend(step.tokens[: 1 + n_acc])  # pending + accepted drafts have valid KV
        for r in results[:-1]:
            if not self._emit(slot, task, r.token, lg[r.index], None):
                return
        last = results[-1]
        self._generate(slot, task, lg[last.index], forced=last.token)

    # ------------------------------------------------------------------ tokens
    def _generate(self, slot: Slot, task: Task, raw: np.ndarray, forced: int | None = None) -> None:
        """Sample (or take `forced`) the next token from `raw`, emit it, make it pending."""
        if forced is None and task.budget is not None:
            forced = task.budget.forced()
        if forced is None:
            allowed = task.constraint.allowed() if task.constraint is not None else None
            sampled = task.sampler.sample(raw, allowed)
            token = sampled.token
        else:
            token, sampled = forced, None
        if self._emit(slot, task, token, raw, sampled):
            task.pending = token

    def _emit(self, slot: Slot, task: Task, token: int, raw: np.ndarray, sampled: Sampled | None) -> bool:
        """Send one generated token; returns False when the request finished on it."""
        task.n_decoded += 1
        task.sampler.accept(token)
        if task.budget is not None:
            task.budget.accept(token)
        self._stats["tokens_predicted_total"] += 1
        req = task.request
        probs = self._probs(task, token, raw, sampled) if req.sampling.n_probs > 0 else None
        is_eog = token in self.eog and not req.sampling.ignore_eos
        if is_eog:
            text, word = "", None
        else:
            text, word = task.stream.push(self.tokenizer.token_bytes(token))
        if task.constraint is not None:
            task.constraint.accept(token, self.tokenizer.token_bytes(token))
        timings = task.timings() if req.timings_per_token else None
        self._send(task, TokenOut(token, text, probs, timings))
        if task.handle.cancelled:
            self._release(slot)
            return False
        if is_eog:
            self._finish(slot, task, "eos")
        elif word is not None:
            self._finish(slot, task, "word", word)
        elif task.constraint is not None and task.constraint.error is not None:
            # the mask allowed the token, so only the grammar's size can fail it: a client error
            self._send(task, Failed(errors.InvalidRequest(f"constrained decoding failed: {task.constraint.error}")))
            self._release(slot)
        elif task.constraint is not None and task.constraint.done():
            self._finish(slot, task, "eos")
        elif 0 <= task.n_predict <= task.n_decoded or req.t_max_predict_ms > 0 and (time.perf_counter() - task.t_prompt_done) * 1000 > req.t_max_predict_ms:
            self._finish(slot, task, "limit")
        elif self._context_full(slot) and not self._shift_context(slot, task):
            self._finish(slot, task, "limit", truncated=True)
        else:
            return True
        return False

    def _probs(self, task: Task, token: int, raw: np.ndarray, sampled: Sampled | None) -> TokenProbs:
        n = task.request.sampling.n_probs
        tp = self._token_prob
        if task.request.sampling.post_sampling_probs:
            if sampled is None:
                ids, p = task.sampler.distribution(raw, None, task.sampler.history[:-1])
            else:
                ids, p = sampled.cand_ids, sampled.cand_probs
            order = np.argsort(-p, kind="stable")
            top = [tp(int(ids[i]), float(p[i])) for i in order[:n]]
            hit = np.flatnonzero(ids == token)
            return TokenProbs(tp(token, float(p[hit[0]]) if len(hit) else 0.0), top)
        raw = raw[: self.vocab_size]
        ids, lps = top_logprobs(raw, n)
        lp_all = log_softmax(raw)
        top = [tp(int(i), finite(v)) for i, v in zip(ids, lps)]
        return TokenProbs(tp(token, finite(lp_all[token])), top)

    def _prompt_probs(self, task: Task, step: Step, lg: np.ndarray) -> None:
        """Row j of a pre-fill chunk's logits predicts the prompt token after the chunk's
        j-th; the first prompt token has no prediction."""
        start, prompt, n = task.next_idx, task.prompt, task.request.sampling.n_probs
        if start == 0:
            task.prompt_probs.append(None)
        for j in range(len(step.tokens)):
            if start + j + 1 < len(prompt):
                lp = log_softmax(lg[j][: self.vocab_size])
                token = prompt[start + j + 1]
                ids = np.argsort(-lp, kind="stable")[:n] if n > 0 else ()
                top = [self._token_prob(int(i), finite(lp[i])) for i in ids]
                task.prompt_probs.append(TokenProbs(self._token_prob(token, finite(lp[token])), top))

    def _token_prob(self, tid: int, value: float) -> TokenProb:
        return TokenProb(tid, self.tokenizer.piece(tid), list(self.tokenizer.token_bytes(tid)), value)

    def _shift_context(self, slot: Slot, task: Task) -> bool:
        """llama.cpp's context shift: keep the first `n_keep` tokens, drop the next
        `n_discard` (default half of the rest) and go on.  The kept tail is re-evaluated at
        its new positions (`task.refill`), since a KV row's keys carry their positions."""
        cache = slot.cache
        if not self.config.context_shift or len(cache) < 4:  # too little left to drop any of it
            return False
        n_keep = len(task.prompt) if task.request.n_keep < 0 else task.request.n_keep
        n_keep = min(n_keep, len(cache) - 2)
        n_discard = task.request.n_discard or (len(cache) - n_keep) // 2
        n_discard = max(1, min(n_discard, len(cache) - n_keep - 1))
        kept = cache[:n_keep] + cache[n_keep + n_discard:]
        log.info("request %d: context shift, %d tokens dropped after the first %d",
                 task.handle.id, n_discard, n_keep)
        slot.cache = cache[:n_keep]
        task.refill = kept[n_keep:]
        if self.drafter is not None:
            self.drafter.tokens[slot.id] = []
        return True

    # ------------------------------------------------------------------ finishing
    def _finish(self, slot: Slot, task: Task, stop_type: str, word: str = "", truncated: bool = False) -> None:
        text = task.stream.flush() if stop_type != "word" else ""
        now = time.perf_counter()
        self._send(task, Finished(stop_type=stop_type, stopping_word=word, truncated=truncated, text=text,
                                  tokens_predicted=task.n_decoded, tokens_evaluated=len(task.prompt),
                                  tokens_cached=len(slot.cache), id_slot=slot.id,
                                  timings=task.timings(now, self.drafter is not None), seed=task.seed))
        if task.request.cache_prompt:  # copied into the prompt cache at the end of the step
            self._finished_rows.append((slot, len(slot.cache)))
        self._release(slot)

    def _save_checkpoints(self, slot: Slot, task: Task) -> None:
        if not task.request.cache_prompt:
            return
        for n, kind in task.request.checkpoints:
            if 0 < n <= len(slot.cache):
                self._cache_insert(slot, n, kind)

    def _cache_insert(self, slot: Slot, n: int, kind: str) -> None:
        if self.prompt_cache is None or n <= 0:
            return
        try:
            main = self.backend.save_row(slot.id, n)
            draft = None
            if self.drafter is not None and self.drafter.tokens[slot.id][:n] == slot.cache[:n] \
                    and len(self.drafter.tokens[slot.id]) >= n:
                draft = self.draft_backend.save_row(slot.id, n)
            self.prompt_cache.insert(slot.cache[:n], CachedKV(main, draft), kind)
        except Exception:
            log.exception("prompt cache insert failed")
