"""What every request schema shares: parsing, the absent/null sentinel, the native
llama.cpp sampling fields, prompt forms and logit_bias forms.

Null means "use the default", as in llama.cpp (`json_value(body, key, default)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from refserver.engine.dry import MAX_BREAKERS
from refserver.engine.types import (
    DEFAULT_SAMPLERS,
    Constraint,
    GenerationRequest,
    SamplingParams,
    SpeculativeParams,
)
from refserver.errors import InvalidRequest


class TokenizerLike(Protocol):
    vocab_size: int
    eog_ids: frozenset

    def encode(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class ServerDefaults:
    """Server-wide values requests fall back to (from the command line and the model)."""

    temperature: float = 0.8
    seed: int = -1
    n_predict: int = -1
    n_slots: int = 1
    n_vocab: int = 0
    draft_max: int = 16
    draft_min: int = 0
    draft_p_min: float = 0.75
    has_draft: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)  # --top-k, --min-p, ... (and --temp)


class RequestModel(BaseModel):
    """Strict JSON types (an int is accepted where a float is expected), unknown keys kept
    in `model_extra` so `--strict` can name them.  Python reads `1e999` as infinity: no
    float field takes a non-finite number (it could only come back as invalid JSON)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True, allow_inf_nan=False)
    # fields some API documents that this model does not read: ignored even with --strict
    documented_fields: ClassVar[frozenset[str]] = frozenset()


class StreamOptions(RequestModel):
    """OpenAI's `stream_options` (`/v1/completions` and `/v1/chat/completions`)."""

    include_usage: bool | None = None


def n_within_slots(n: int, defaults: ServerDefaults, name: str = "n") -> int:
    """A request's number of choices, which may not exceed the server's slots."""
    if n > defaults.n_slots:
        raise InvalidRequest(f"{name} ({n}) must not exceed the number of slots ({defaults.n_slots})")
    return n


def parse_request(cls: type[RequestModel], body: Any, strict: bool = False) -> RequestModel:
    """Validate a decoded JSON body; any problem is an InvalidRequest naming the field."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, got {_json_type(body)}")
    try:
        model = cls.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(_validation_message(exc)) from None
    unknown = set(model.model_extra or ()) - cls.documented_fields
    if strict and unknown:
        names = ", ".join(sorted(unknown))
        raise InvalidRequest(f"unknown field(s): {names} (the server runs with --strict)")
    return model


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("function-", "union[")))
        msg = err["msg"]
        if err.get("type") == "missing":
            msg = "is required"
        parts.append(f"'{loc}': {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def or_default(value: Any, default: Any) -> Any:
    """`default` for a field left out or sent as null (llama.cpp's `json_value`)."""
    return default if value is None else value


# Shorthand types.  Strict mode: bools are not ints, strings are not numbers.
# llama.cpp keeps sampling parameters in C floats: beyond float32's range they would be
# infinite there, so they are refused here.
FLOAT32_MAX = 3.4028234663852886e38
Number = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]

# What one request may ask for (README, Limits), so that it can neither queue unbounded
# work nor make its response explode; each is a 400 naming the bound.  llama.cpp has none.
MAX_PROMPTS = 1024  # prompts in one `prompt` list: each is a queued generation (x n)
MAX_LOGIT_BIAS = 4096  # logit_bias entries, and tokens they resolve to (each is echoed back)
MAX_N_PROBS = 256  # n_probs: entries per generated token in the response
MAX_STOP = 64  # stop strings, each checked against the text held back at every token,
MAX_STOP_CHARS = 1024  # and their length (the hold-back check is quadratic in it)
MAX_SAMPLERS = 64  # names in `samplers`: the chain runs once per token
Stop = str | Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegInt = Annotated[int, Field(ge=0)]
NPredict = Annotated[int, Field(ge=-1)]


class NativeParams(RequestModel):
    """llama.cpp's `/completion` generation fields (CONTRACT §2), also accepted on `/v1/*`."""

    temperature: Number | None = None
    dynatemp_range: Number | None = None
    dynatemp_exponent: Number | None = None
    top_k: int | None = None
    top_p: Prob | None = None
    min_p: Prob | None = None
    top_n_sigma: Number | None = None
    typical_p: Prob | None = None
    xtc_probability: Prob | None = None
    xtc_threshold: Number | None = None
    repeat_penalty: Annotated[float, Field(ge=0.0)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1)] | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    dry_multiplier: Number | None = None
    dry_base: Number | None = None
    dry_allowed_length: Annotated[int, Field(ge=0)] | None = None
    dry_penalty_last_n: Annotated[int, Field(ge=-1)] | None = None
    dry_sequence_breakers: Annotated[list[str], Field(max_length=MAX_BREAKERS)] | None = None
    mirostat: Annotated[int, Field(ge=0, le=2)] | None = None
    mirostat_tau: Number | None = None
    mirostat_eta: Number | None = None
    adaptive_target: Number | None = None
    adaptive_decay: Number | None = None
    n_predict: NPredict | None = None
    max_tokens: NPredict | None = None
    n_keep: Annotated[int, Field(ge=-1)] | None = None
    n_discard: NonNegInt | None = None
    n_indent: int | None = None
    stop: Stop | None = None
    seed: int | None = None
    ignore_eos: bool | None = None
    logit_bias: Any = None  # shape checked by parse_logit_bias: pydantic would copy 4k+ entries holding the GIL
    n_probs: Annotated[int, Field(ge=0, le=MAX_N_PROBS)] | None = None
    post_sampling_probs: bool | None = None
    min_keep: NonNegInt | None = None
    t_max_predict_ms: NonNegInt | None = None
    id_slot: Annotated[int, Field(ge=-1)] | None = None
    cache_prompt: bool | None = None
    samplers: Annotated[list[str], Field(max_length=MAX_SAMPLERS)] | Annotated[
        str, Field(max_length=MAX_SAMPLERS)] | None = None
    timings_per_token: bool | None = None
    return_progress: bool | None = None
    grammar: str | None = None
    json_schema: dict | bool | None = None
    lora: list | None = None
    speculative_n_max: NonNegInt | None = Field(None, alias="speculative.n_max")
    speculative_n_min: NonNegInt | None = Field(None, alias="speculative.n_min")
    speculative_p_min: Prob | None = Field(None, alias="speculative.p_min")
    _sampling: dict = PrivateAttr(default_factory=dict)  # by n_probs: built once, not per prompt

    # -------------------------------------------------------------- conversion
    def requested_n_predict(self) -> int | None:
        """The request's own token limit (`n_predict`, else `max_tokens`); None leaves it to
        the engine, which applies the server's -n."""
        return self.n_predict if self.n_predict is not None else self.max_tokens

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def sampling_params(self, tokenizer: TokenizerLike, defaults: ServerDefaults,
                        n_probs: int | None = None) -> SamplingParams:
        """The request's SamplingParams, built once per `n_probs` (logit_bias strings are
        tokenized once for all of a request's prompts and choices)."""
        if n_probs not in self._sampling:
            self._sampling[n_probs] = self._new_sampling_params(tokenizer, defaults, n_probs)
        return self._sampling[n_probs]

    def _new_sampling_params(self, tokenizer: TokenizerLike, defaults: ServerDefaults,
                             n_probs: int | None) -> SamplingParams:
        d = defaults.sampling
        temperature = or_default(self.temperature, defaults.temperature)
        return SamplingParams(
            temperature=float(temperature),
            dynatemp_range=float(or_default(self.dynatemp_range, d.dynatemp_range)),
            dynatemp_exponent=float(or_default(self.dynatemp_exponent, d.dynatemp_exponent)),
            top_k=or_default(self.top_k, d.top_k),
            top_p=float(or_default(self.top_p, d.top_p)),
            min_p=float(or_default(self.min_p, d.min_p)),
            typical_p=float(or_default(self.typical_p, d.typical_p)),
            xtc_probability=float(or_default(self.xtc_probability, d.xtc_probability)),
            xtc_threshold=float(or_default(self.xtc_threshold, d.xtc_threshold)),
            repeat_penalty=float(or_default(self.repeat_penalty, d.repeat_penalty)),
            repeat_last_n=or_default(self.repeat_last_n, d.repeat_last_n),
            presence_penalty=float(or_default(self.presence_penalty, d.presence_penalty)),
            frequency_penalty=float(or_default(self.frequency_penalty, d.frequency_penalty)),
            logit_bias=tuple(parse_logit_bias(self.logit_bias, tokenizer)),
            seed=or_default(self.seed, -1),
            n_probs=or_default(n_probs if n_probs is not None else self.n_probs, 0),
            post_sampling_probs=bool(self.post_sampling_probs),
            min_keep=or_default(self.min_keep, d.min_keep),
            samplers=parse_samplers(self.samplers),
            ignore_eos=bool(or_default(self.ignore_eos, d.ignore_eos)),
            top_n_sigma=float(or_default(self.top_n_sigma, d.top_n_sigma)),
            dry_multiplier=float(or_default(self.dry_multiplier, d.dry_multiplier)),
            # llama.cpp replaces a base below 1 by the default
            dry_base=float(self.dry_base) if self.dry_base is not None and self.dry_base >= 1.0 else d.dry_base,
            dry_allowed_length=or_default(self.dry_allowed_length, d.dry_allowed_length),
            dry_penalty_last_n=or_default(self.dry_penalty_last_n, d.dry_penalty_last_n),
            dry_sequence_breakers=tuple(or_default(self.dry_sequence_breakers, d.dry_sequence_breakers)),
            mirostat=or_default(self.mirostat, d.mirostat),
            mirostat_tau=float(or_default(self.mirostat_tau, d.mirostat_tau)),
            mirostat_eta=float(or_default(self.mirostat_eta, d.mirostat_eta)),
            adaptive_target=float(or_default(self.adaptive_target, d.adaptive_target)),
            adaptive_decay=float(or_default(self.adaptive_decay, d.adaptive_decay)),
        )

    def speculative_params(self, defaults: ServerDefaults) -> SpeculativeParams | None:
        if self.speculative_n_max is None and self.speculative_n_min is None and self.speculative_p_min is None:
            return None
        return SpeculativeParams(
            n_max=or_default(self.speculative_n_max, defaults.draft_max),
            n_min=or_default(self.speculative_n_min, defaults.draft_min),
            p_min=or_default(self.speculative_p_min, defaults.draft_p_min))

    def check_common(self) -> None:
        if self.lora:
            raise InvalidRequest("'lora': this server has no LoRA adapters; send [] or leave it out")

    def generation_request(self, prompt: list[int], tokenizer: TokenizerLike, defaults: ServerDefaults, *,
                           n_predict: int | None, constraint: Constraint | None = None,
                           n_probs: int | None = None, stop: tuple[str, ...] | None = None,
                           checkpoints: tuple = ()) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            sampling=self.sampling_params(tokenizer, defaults, n_probs=n_probs),
            n_predict=n_predict,
            stop=self.stop_strings() if stop is None else stop,
            id_slot=or_default(self.id_slot, -1),
            cache_prompt=or_default(self.cache_prompt, True),
            constraint=constraint,
            speculative=self.speculative_params(defaults),
            t_max_predict_ms=self.t_max_predict_ms or 0,
            return_progress=bool(self.return_progress),
            timings_per_token=bool(self.timings_per_token),
            n_keep=or_default(self.n_keep, 0),
            n_discard=or_default(self.n_discard, 0),
            checkpoints=checkpoints,
        )

    def generation_settings(self, sampling: SamplingParams, n_predict: int, seed: int,
                            stream: bool, stop: tuple[str, ...], tokenizer: TokenizerLike,
                            defaults: ServerDefaults) -> dict:
        """The `generation_settings` echo of llama.cpp's final response."""
        d = SamplingParams()
        bias = [{"bias": _finite_or_none(b), "token": t} for t, b in sampling.logit_bias]
        if sampling.ignore_eos:
            bias += [{"bias": None, "token": t} for t in sorted(tokenizer.eog_ids)]
        spec = self.speculative_params(defaults) or SpeculativeParams(
            defaults.draft_max, defaults.draft_min, defaults.draft_p_min)
        return {
            "seed": seed,
            "temperature": sampling.temperature,
            "dynatemp_range": sampling.dynatemp_range,
            "dynatemp_exponent": sampling.dynatemp_exponent,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "min_p": sampling.min_p,
            "top_n_sigma": sampling.top_n_sigma,
            "xtc_probability": sampling.xtc_probability,
            "xtc_threshold": sampling.xtc_threshold,
            "typical_p": sampling.typical_p,
            "repeat_last_n": sampling.repeat_last_n,
            "repeat_penalty": sampling.repeat_penalty,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
            "dry_multiplier": sampling.dry_multiplier,
            "dry_base": sampling.dry_base,
            "dry_allowed_length": sampling.dry_allowed_length,
            "dry_penalty_last_n": sampling.dry_penalty_last_n,
            "dry_sequence_breakers": list(sampling.dry_sequence_breakers),
            "mirostat": sampling.mirostat,
            "mirostat_tau": sampling.mirostat_tau,
            "mirostat_eta": sampling.mirostat_eta,
            "stop": list(stop),
            "max_tokens": n_predict,
            "n_predict": n_predict,
            "n_keep": or_default(self.n_keep, 0),
            "n_discard": or_default(self.n_discard, 0),
            "ignore_eos": sampling.ignore_eos,
            "stream": stream,
            "logit_bias": bias,
            "n_probs": sampling.n_probs,
            "min_keep": sampling.min_keep,
            "grammar": self.grammar or "",
            "samplers": list(sampling.samplers if sampling.samplers != d.samplers else DEFAULT_SAMPLERS),
            "speculative.n_max": spec.n_max,
            "speculative.n_min": spec.n_min,
            "speculative.p_min": spec.p_min,
            "timings_per_token": bool(self.timings_per_token),
            "post_sampling_probs": sampling.post_sampling_probs,
            "adaptive_target": sampling.adaptive_target,
            "adaptive_decay": sampling.adaptive_decay,
            "lora": [],
        }


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def encode_text(tokenizer: TokenizerLike, text: str, add_special: bool, parse_special: bool = True,
                where: str = "text") -> list[int]:
    """tokenizer.encode, with text the tokenizer cannot take (lone surrogates) as a 400."""
    try:
        return tokenizer.encode(text, add_special=add_special, parse_special=parse_special)
    except (TypeError, ValueError, UnicodeError) as exc:
        raise InvalidRequest(f"{where} cannot be tokenized (invalid Unicode?): {exc}") from None


# ------------------------------------------------------------------ samplers
_SAMPLER_LETTERS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p",
                    "x": "xtc", "t": "temperature", "s": "top_n_sigma", "e": "penalties"}
_SAMPLER_ALIASES = {"top-k": "top_k", "top-p": "top_p", "min-p": "min_p", "typical_p": "typ_p",
                    "typical": "typ_p", "typ-p": "typ_p", "temp": "temperature", "top-n-sigma": "top_n_sigma"}


def parse_samplers(value: list[str] | str | None) -> tuple[str, ...]:
    """`samplers` as a list of names or a string of llama.cpp's one-letter codes."""
    if value is None:
        return DEFAULT_SAMPLERS
    if isinstance(value, str):
        names = [_SAMPLER_LETTERS[c] for c in value if c in _SAMPLER_LETTERS]
    else:
        names = [_SAMPLER_ALIASES.get(n, n) for n in value]
    return tuple(names)


# ------------------------------------------------------------------ logit_bias
def _bias_value(value: Any) -> float | None:
    """A number, or `false` for -inf (token banned); anything else is skipped."""
    if isinstance(value, bool):
        return -math.inf if value is False else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _finite_bias(value: Any, where: str) -> float | None:
    """`_bias_value`, with numbers outside float32's range (and NaN) refused."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not -FLOAT32_MAX <= value <= FLOAT32_MAX:
        raise InvalidRequest(f"logit_bias{where}: the bias must be a finite number within float32's range "
                             "(send false to ban a token)")
    return _bias_value(value)


def parse_logit_bias(raw: Any, tokenizer: TokenizerLike) -> list[tuple[int, float]]:
    """llama.cpp's logit_bias forms: `[[tok|"str", bias|false], ...]` or `{"tok|str": bias|false}`.

    A string is tokenized (no BOS) and every token of it gets the bias; token ids outside
    the vocabulary are ignored, as llama.cpp does.
    """
    if raw is None or raw is False or raw == [] or raw == {}:
        return []
    if isinstance(raw, (list, dict)) and len(raw) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias has {len(raw)} entries; at most {MAX_LOGIT_BIAS} per request")
    n_vocab = tokenizer.vocab_size
    pairs: list[tuple[int, float]] = []

    def add(key: Any, value: Any, where: str) -> None:
        bias = _finite_bias(value, where)
        if bias is None:
            return
        if isinstance(key, bool):
            raise InvalidRequest(f"logit_bias{where}: a token must be an id or a string")
        if isinstance(key, int):
            if 0 <= key < n_vocab:
                pairs.append((key, bias))
        elif isinstance(key, str):
            try:
                tok = int(key)
            except ValueError:
                pairs.extend((t, bias) for t in encode_text(tokenizer, key, False, where='a logit_bias string'))
            else:
                if 0 <= tok < n_vocab:
                    pairs.append((tok, bias))
        else:
            raise InvalidRequest(f"logit_bias{where}: a token must be an id or a string")

    if isinstance(raw, list):
        for i, item in enumerate(raw):
            if not (isinstance(item, list) and len(item) == 2):
                raise InvalidRequest(f"logit_bias[{i}] must be a pair [token, bias]")
            add(item[0], item[1], f"[{i}]")
    elif isinstance(raw, dict):
        for key, value in raw.items():
            add(key, value, f"[{key!r}]")
    else:
        raise InvalidRequest("logit_bias must be an array of [token, bias] pairs or an object")
    if len(pairs) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias resolves to {len(pairs)} tokens; at most {MAX_LOGIT_BIAS} per request")
    return pairs


# ------------------------------------------------------------------ prompts
def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_mixed(value: Any) -> bool:
    """A list holding at least one string and one token id (and nothing else)."""
    return (isinstance(value, list) and any(isinstance(x, str) for x in value)
            and any(_is_token(x) for x in value)
            and all(isinstance(x, str) or _is_token(x) for x in value))


def _tokenize_one(prompt: Any, tokenizer: TokenizerLike, where: str) -> list[int]:
    if isinstance(prompt, str):
        return encode_text(tokenizer, prompt, True, where=where)
    if isinstance(prompt, dict):
        if prompt.get("multimodal_data"):
            raise InvalidRequest(f"{where}: multimodal_data needs a multimodal model; this model takes "
                                 "text only")
        text = prompt.get("prompt_string")
        if not isinstance(text, str):
            raise InvalidRequest(f"{where}: a prompt object needs a string 'prompt_string'")
        return encode_text(tokenizer, text, True, where=where)
    if isinstance(prompt, list) and all(_is_token(x) for x in prompt):
        ids = list(prompt)
        bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise InvalidRequest(f"{where}: token id {bad[0]} is outside the vocabulary "
                                 f"(0..{tokenizer.vocab_size - 1})")
        return ids
    if _is_mixed(prompt):
        ids: list[int] = []
        for j, part in enumerate(prompt):
            if isinstance(part, str):
                ids += encode_text(tokenizer, part, j == 0, where=where)
            else:
                if not 0 <= part < tokenizer.vocab_size:
                    raise InvalidRequest(f"{where}: token id {part} is outside the vocabulary")
                ids.append(part)
        return ids
    raise InvalidRequest(f"{where}: a prompt must be a string, a list of token ids, a mixed list of "
                         "strings and ids, or {\"prompt_string\": ...}")


def tokenize_prompts(prompt: Any, tokenizer: TokenizerLike) -> tuple[list[list[int]], bool]:
    """Every prompt form of CONTRACT §2 → (token lists, whether the request was a list of prompts)."""
    if prompt is None:
        raise InvalidRequest("'prompt' is required")
    if isinstance(prompt, (str, dict)) or _is_mixed(prompt) or (
            isinstance(prompt, list) and prompt and all(_is_token(x) for x in prompt)):
        prompts, many = [_tokenize_one(prompt, tokenizer, "prompt")], False
    elif isinstance(prompt, list):
        if not prompt:
            raise InvalidRequest("'prompt' is empty")
        if len(prompt) > MAX_PROMPTS:
            raise InvalidRequest(f"'prompt' holds {len(prompt)} prompts; at most {MAX_PROMPTS} per request")
        prompts = [_tokenize_one(p, tokenizer, f"prompt[{i}]") for i, p in enumerate(prompt)]
        many = True
    else:
        raise InvalidRequest(f"'prompt' must be a string or an array, got {_json_type(prompt)}")
    for i, ids in enumerate(prompts):
        if not ids:
            raise InvalidRequest("the prompt is empty" if not many else f"prompt[{i}] is empty")
    return prompts, many
