"""Native llama.cpp `/completion` (alias `/completions`), CONTRACT §2."""

from __future__ import annotations

from refserver.chat.grammars import response_format_constraint
from refserver.schemas.completion import CompletionRequest
from refserver.stream.choice import ChoiceStream
from refserver.stream.deltas import FinishDelta, ProgressDelta, TokenDelta
from refserver.stream.generation import Generation

from .base import BaseHandler, dumps, log
from .formats import native_probs, select_fields
from .offload import off_loop


def native_constraint(req):
    """`grammar` / `json_schema` of a native request (grammar wins, as in llama.cpp)."""
    grammar = req.grammar or None
    schema = None if grammar else req.json_schema
    if grammar is None and schema is None:
        return None
    return response_format_constraint(None, json_schema=schema, grammar=grammar)


def native_final(state, req, choice: ChoiceStream, stream: bool) -> dict:
    """llama.cpp's final `/completion` object (also chat's `__verbose`)."""
    result = choice.result
    fin = result.finished
    gen = choice.request
    tok = state.tokenizer
    out = {
        "index": choice.index,
        "content": fin.text if stream else result.raw_text,
        "tokens": list(result.tokens) if getattr(req, "return_tokens", False) and not stream else [],
        "id_slot": fin.id_slot,
        "stop": True,
        "model": state.model.alias,
        "tokens_predicted": fin.tokens_predicted,
        "tokens_evaluated": fin.tokens_evaluated,
        "generation_settings": req.generation_settings(
            gen.sampling, state.engine.n_predict_for(gen), fin.seed, bool(req.stream), gen.stop, tok, state.defaults),
        "prompt": tok.decode(gen.prompt),
        "has_new_line": "\n" in result.raw_text,
        "truncated": fin.truncated,
        "stop_type": fin.stop_type,
        "stopping_word": fin.stopping_word,
        "tokens_cached": fin.tokens_cached,
        "timings": fin.timings,
    }
    if gen.sampling.n_probs > 0 and not stream:
        out["completion_probabilities"] = [native_probs(p, gen.sampling.post_sampling_probs)
                                           for p in result.logprobs]
    return out


def partial_object(choice: ChoiceStream, d: TokenDelta) -> dict:
    """One streamed token's chunk."""
    gen = choice.request
    out = {"index": choice.index, "content": d.text, "tokens": [d.token], "stop": False,
           "id_slot": choice.id_slot, "tokens_predicted": choice.n_tokens,
           "tokens_evaluated": len(gen.prompt)}
    if d.probs is not None and gen.sampling.n_probs > 0:
        out["completion_probabilities"] = [native_probs(d.probs, gen.sampling.post_sampling_probs)]
    if d.timings:
        out["timings"] = d.timings
    return out


def progress_object(choice: ChoiceStream, d: ProgressDelta) -> dict:
    p = d.progress
    return {"index": choice.index, "content": "", "tokens": [], "stop": False, "id_slot": choice.id_slot,
            "tokens_predicted": 0, "tokens_evaluated": p.total,
            "prompt_progress": {"total": p.total, "cache": p.cache, "processed": p.processed,
                                "time_ms": p.time_ms},
            "timings": p.timings()}


class CompletionHandler(BaseHandler):
    route = "/completion"

    async def post(self) -> None:
        state = self.state
        req = await off_loop(self.parse_body, CompletionRequest)
        reqs, many = await off_loop(req.to_generation_requests, state.tokenizer, state.defaults,
                                    native_constraint(req))
        n = req.n_choices(state.defaults)
        if state.config.verbose:
            self.log_prompts(reqs)
        gen = await self.start_generation(reqs, n=n)
        if req.stream:
            await self._stream(req)
        else:
            await self._collect(req, gen, many)

    def log_prompts(self, reqs) -> None:
        for r in reqs:
            log.debug("request %s prompt: %r", self.request_id, self.state.tokenizer.decode(r.prompt))

    async def _collect(self, req, gen: Generation, many: bool) -> None:
        await gen.collect()
        results = [native_final(self.state, req, c, stream=False) for c in gen.choices]
        if req.response_fields:
            results = [select_fields(r, req.response_fields) for r in results]
        self.write_json(await off_loop(dumps, results if many else results[0]))

    async def _stream(self, req) -> None:
        async for c, deltas in self.stream_deltas():
            for d in deltas:
                if isinstance(d, TokenDelta):
                    self.sse_send(partial_object(c, d))
                elif isinstance(d, ProgressDelta) and c.request.return_progress:
                    self.sse_send(progress_object(c, d))
                elif isinstance(d, FinishDelta):
                    self.sse_send(native_final(self.state, req, c, stream=True))
        self.finish()
