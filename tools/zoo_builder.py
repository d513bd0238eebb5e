"""onnxruntime-genai's model builder, run with two fix-ups (used by tools/make_zoo.py).

    python tools/zoo_builder.py -i HF_DIR -o OUT -p int4 -e cpu   # the builder's own arguments

onnxruntime-genai 0.18 reads Gemma 3's RoPE settings the way transformers 4 stored them (a flat
`rope_parameters` plus `rope_local_base_freq`); transformers 5 nests them per layer type
(`full_attention`, `sliding_attention`), and the builder stops with KeyError 'rope_type'.  This
flattens them back (same values) before the builder sees the config.

Its SmolLM3 export turns RoPE off inside GroupQueryAttention for the NoPE layers
(`no_rope_layers[i] == 0`) but then adds a separate RotaryEmbedding node fed by a
`position_ids` input the graph does not have (KeyError 'position_ids'); the fix-up turns
RoPE off for those layers altogether, which is what transformers computes.  Other models
pass unchanged; tools/make_zoo.py checks every export against transformers.
"""

from __future__ import annotations

import runpy
import sys

import transformers

_from_pretrained = transformers.AutoConfig.from_pretrained.__func__


def _flat_gemma3_rope(cls, *args, **kwargs):
    config = _from_pretrained(cls, *args, **kwargs)
    rope = getattr(config, "rope_parameters", None)
    if getattr(config, "model_type", "") == "gemma3_text" and isinstance(rope, dict) and "full_attention" in rope:
        config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        config.rope_parameters = dict(rope["full_attention"])
    return config


def _nope_layers_without_rope() -> None:
    import onnxruntime_genai.models  # noqa: F401 - puts the builder's folder on sys.path
    from builders.smollm import SmolLM3Model  # the module object the builder itself imports

    make_attention = SmolLM3Model.make_attention

    def patched(self, layer_id, attention, root_input, **kwargs):
        rope = self.attention_attrs["rope"]
        self.attention_attrs["rope"] = rope and bool(self.no_rope_layers[layer_id])
        try:
            make_attention(self, layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"] = rope

    SmolLM3Model.make_attention = patched


if __name__ == "__main__":
    transformers.AutoConfig.from_pretrained = classmethod(_flat_gemma3_rope)
    _nope_layers_without_rope()
    sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
