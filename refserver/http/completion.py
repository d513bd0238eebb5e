"""Native llama.cpp `/completion` (alias `/completions`), CONTRACT §2."""

from __future__ import annotations

from refserver.chat.grammars import response_format_constraint
from refserver.engine.types import Finished, Progress, TokenOut
from refserver.schemas.completion import CompletionRequest

from .base import BaseHandler, dumps, log
from .formats import ChoiceState, choice_states, native_probs, select_fields
from .offload import off_loop


def native_constraint(req):
    """`grammar` / `json_schema` of a native request (grammar wins, as in llama.cpp)."""
    grammar = req.grammar or None
    schema = None if grammar else req.json_schema
    if grammar is None and schema is None:
        return None
    return response_format_constraint(None, json_schema=schema, grammar=grammar)


def native_final(state, req, gen, choice: ChoiceState, stream: bool) -> dict:
    """llama.cpp's final `/completion` object (also chat's `__verbose`)."""
    fin: Finished = choice.finished
    tok = state.tokenizer
    content = fin.text if stream else choice.content
    out = {
        "index": choice.index,
        "content": content,
        "tokens": list(choice.tokens) if getattr(req, "return_tokens", False) and not stream else [],
        "id_slot": fin.id_slot,
        "stop": True,
        "model": state.model.alias,
        "tokens_predicted": fin.tokens_predicted,
        "tokens_evaluated": fin.tokens_evaluated,
        "generation_settings": req.generation_settings(
            gen.sampling, gen.n_predict, fin.seed, bool(req.stream), gen.stop, tok, state.defaults),
        "prompt": tok.decode(gen.prompt),
        "has_new_line": "\n" in choice.content,
        "truncated": fin.truncated,
        "stop_type": fin.stop_type,
        "stopping_word": fin.stopping_word,
        "tokens_cached": fin.tokens_cached,
        "timings": fin.timings,
    }
    if gen.sampling.n_probs > 0 and not stream:
        out["completion_probabilities"] = [native_probs(p, gen.sampling.post_sampling_probs)
                                           for p in choice.probs]
    return out


class CompletionHandler(BaseHandler):
    route = "/completion"

    async def post(self) -> None:
        state = self.state
        req = await off_loop(self.parse_body, CompletionRequest)
        reqs, many = await off_loop(req.to_generation_requests, state.tokenizer, state.defaults,
                                    native_constraint(req))
        n = req.n_choices(state.defaults)
        choices = choice_states(reqs, n)
        if state.config.verbose:
            self.log_prompts(reqs)
        await self.submit(reqs)
        if req.stream:
            await self._stream(req, reqs, choices)
        else:
            await self._collect(req, reqs, choices, many)

    def log_prompts(self, reqs) -> None:
        for r in reqs:
            log.debug("request %s prompt: %r", self.request_id, self.state.tokenizer.decode(r.prompt))

    # ------------------------------------------------------------------ shapes
    def partial_object(self, choice: ChoiceState, gen, event: TokenOut) -> dict:
        out = {"index": choice.index, "content": event.text, "tokens": [event.token], "stop": False,
               "id_slot": choice.id_slot, "tokens_predicted": len(choice.tokens),
               "tokens_evaluated": len(choice.prompt)}
        if event.probs is not None and gen.sampling.n_probs > 0:
            out["completion_probabilities"] = [native_probs(event.probs, gen.sampling.post_sampling_probs)]
        if event.timings:
            out["timings"] = event.timings
        return out

    def _slot_of(self, choice: ChoiceState) -> None:
        """The slot serving a choice, for partial chunks (best effort: -1 until known)."""
        if choice.id_slot >= 0 or choice.index >= len(self._handles):
            return
        handle = self._handles[choice.index]
        slot = getattr(handle, "id_slot", None)
        if slot is not None:
            choice.id_slot = slot
            return
        for s in self.state.engine.slots():
            if s.get("id_task") == getattr(handle, "id", None):
                choice.id_slot = s.get("id", -1)

    # ------------------------------------------------------------------ modes
    async def _collect(self, req, reqs, choices, many: bool) -> None:
        await self.collect(choices)
        results = [native_final(self.state, req, reqs[c.index], c, stream=False) for c in choices]
        if req.response_fields:
            results = [select_fields(r, req.response_fields) for r in results]
        self.write_json(await off_loop(dumps, results if many else results[0]))

    async def _stream(self, req, reqs, choices) -> None:
        async for i, event in self.events(keepalive=True):
            c = choices[i]
            if isinstance(event, TokenOut):
                if not c.tokens:
                    self._slot_of(c)
                c.add(event)
                self.sse_send(self.partial_object(c, reqs[i], event))
            elif isinstance(event, Progress):
                if reqs[i].return_progress:
                    self.sse_send({
                        "index": i, "content": "", "tokens": [], "stop": False, "id_slot": c.id_slot,
                        "tokens_predicted": 0, "tokens_evaluated": event.total,
                        "prompt_progress": {"total": event.total, "cache": event.cache,
                                            "processed": event.processed, "time_ms": event.time_ms}})
            elif isinstance(event, Finished):
                c.finish(event)
                self.n_predicted_tokens += event.tokens_predicted
                self.sse_send(native_final(self.state, req, reqs[i], c, stream=True))
        self.finish()
