"""llama.cpp's `generation_settings` echo (final `/completion` object, chat's `__verbose`,
and `/props`' `default_generation_settings.params`), built from what the engine was asked."""

from __future__ import annotations

import math

from refserver.engine.types import GenerationRequest, SpeculativeParams


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def generation_settings(gen: GenerationRequest, *, n_predict: int, seed: int, stream: bool,
                        eog_ids: frozenset[int], speculative: SpeculativeParams) -> dict:
    """The settings a generation ran with: `n_predict` after the server's -n, the seed
    actually used, `speculative` the server's draft settings when the request gave none."""
    sampling = gen.sampling
    bias = [{"bias": _finite_or_none(b), "token": t} for t, b in sampling.logit_bias]
    if sampling.ignore_eos:
        bias += [{"bias": None, "token": t} for t in sorted(eog_ids)]
    spec = gen.speculative or speculative
    c = gen.constraint
    return {
        "seed": seed,
        **{k: getattr(sampling, k) for k in _SAMPLING_ECHO},
        "dry_sequence_breakers": list(sampling.dry_sequence_breakers),
        "stop": list(gen.stop),
        "max_tokens": n_predict,
        "n_predict": n_predict,
        "n_keep": gen.n_keep,
        "n_discard": gen.n_discard,
        "ignore_eos": sampling.ignore_eos,
        "stream": stream,
        "logit_bias": bias,
        "n_probs": sampling.n_probs,
        "min_keep": sampling.min_keep,
        "grammar": c.text if c is not None and c.source == "'grammar'" else "",
        "samplers": list(sampling.samplers),
        "speculative.n_max": spec.n_max,
        "speculative.n_min": spec.n_min,
        "speculative.p_min": spec.p_min,
        "timings_per_token": gen.timings_per_token,
        "post_sampling_probs": sampling.post_sampling_probs,
        "lora": [],
        "adaptive_target": sampling.adaptive_target,
        "adaptive_decay": sampling.adaptive_decay,
    }


_SAMPLING_ECHO = ("temperature", "dynatemp_range", "dynatemp_exponent", "top_k", "top_p", "min_p", "top_n_sigma",
                  "xtc_probability", "xtc_threshold", "typical_p", "repeat_last_n", "repeat_penalty",
                  "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base", "dry_allowed_length",
                  "dry_penalty_last_n", "mirostat", "mirostat_tau", "mirostat_eta")
