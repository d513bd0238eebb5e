"""The ONNX Runtime backend against stories260K's reference greedy ids.

Both layouts are checked: `onnx-plain` (torch export, present = concat(past, new)) and
`onnx-genai` (GroupQueryAttention sharing one buffer as past and present, with
position_ids).  `verification.json` holds 64 greedy ids per prompt that numpy, llama.cpp
and transformers agree on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import backends
from backends import ModelLoadError, ProviderUnavailable, Step

pytestmark = pytest.mark.profile("refserver")

try:
    from .shared_models import needs_shared, stories260k_dir
except ImportError:  # tests/unit is not a package
    from shared_models import needs_shared, stories260k_dir

ROW_LEN = 160  # longest prompt (46) + 64 new tokens fits


def _prompts() -> list[tuple[list[int], list[int]]]:
    path = stories260k_dir() / "verification.json"
    if not path.is_file():
        return []
    prompts = json.loads(path.read_text())["prompts"].values()
    return [(p["prompt_ids"], p["greedy_ids_64"]) for p in prompts]


PROMPTS = _prompts()


@pytest.fixture(scope="module", params=["onnx-plain", "onnx-genai"])
def backend(request):
    b = backends.load(stories260k_dir() / request.param, threads=2)
    yield b
    b.close()


def prefill(b, row: int, tokens: list[int], pos: int = 0, chunk: int | None = None) -> np.ndarray:
    chunk = chunk or len(tokens)
    for start in range(0, len(tokens), chunk):
        logits = b.forward([Step(row, pos + start, tokens[start:start + chunk])])[0]
    return logits


def greedy(b, row: int, logits: np.ndarray, pos: int, n: int = 64) -> list[int]:
    out = []
    for _ in range(n):
        out.append(int(logits[-1].argmax()))
        logits = b.forward([Step(row, pos, [out[-1]])])[0]
        pos += 1
    return out


@pytest.mark.feature("engine")
@needs_shared
def test_model_info(backend):
    info = backend.info
    assert (info.vocab_size, info.n_layers, info.n_kv_heads, info.head_dim) == (512, 5, 4, 8)
    assert info.context_length == 2048 and info.kv_dtype == "float32" and info.uses_position_ids
    assert info.layout == ("gqa" if info.path.endswith("onnx-genai") else "plain")
    assert info.n_params == 260032 and info.size_bytes > 1_000_000


@pytest.mark.feature("engine")
@needs_shared
@pytest.mark.parametrize("chunk", [None, 7])
def test_greedy_matches_reference(backend, chunk):
    backend.allocate(2, ROW_LEN)
    for prompt, expected in PROMPTS:
        logits = prefill(backend, 1, prompt, chunk=chunk)
        assert logits.shape == (1, 512) and logits.dtype == np.float32
        assert greedy(backend, 1, logits, len(prompt)) == expected


@pytest.mark.feature("engine")
@needs_shared
@pytest.mark.parametrize("idle", [1, 2])
def test_batched_decode_leaves_idle_row_intact(backend, idle):
    (pa, ea), (pb, eb), (pc, _) = PROMPTS
    backend.allocate(4, ROW_LEN)
    rows = [r for r in range(3) if r != idle]
    # The idle row holds prompt C, then is trimmed by 3: positions >= len-3 are stale,
    # so the dummy writes of the batch below must land at or after len(pc).
    prefill(backend, idle, pc)
    la, lb = prefill(backend, rows[0], pa), prefill(backend, rows[1], pb)
    out_a, out_b, pos_a, pos_b = [], [], len(pa), len(pb)
    for _ in range(64):
        out_a.append(int(la[-1].argmax()))
        out_b.append(int(lb[-1].argmax()))
        la, lb = backend.forward([Step(rows[0], pos_a, [out_a[-1]]), Step(rows[1], pos_b, [out_b[-1]])])
        pos_a, pos_b = pos_a + 1, pos_b + 1
    assert (out_a, out_b) == (ea, eb)
    resumed = prefill(backend, idle, pc[-3:], pos=len(pc) - 3)
    backend.allocate(1, ROW_LEN)
    np.testing.assert_allclose(resumed, prefill(backend, 0, pc), atol=1e-5)


@pytest.mark.feature("engine")
@needs_shared
def test_decode_and_prefill_chunks_in_one_call(backend):
    (pa, ea), (pb, eb), _ = PROMPTS
    backend.allocate(3, ROW_LEN)
    la, lc = prefill(backend, 0, pa), prefill(backend, 2, pa)
    out_a, out_b, out_c, pos_b, lb = [], [], [], 0, None
    for i in range(64):
        out_a.append(int(la[-1].argmax()))
        out_c.append(int(lc[-1].argmax()))
        steps = [Step(0, len(pa) + i, [out_a[-1]]), Step(2, len(pa) + i, [out_c[-1]])]
        if pos_b < len(pb):
            steps.insert(1, Step(1, pos_b, pb[pos_b:pos_b + 7]))
            pos_b += len(steps[1].tokens)
        elif len(out_b) < 20:
            out_b.append(int(lb[-1].argmax()))
            steps.insert(1, Step(1, pos_b, [out_b[-1]]))
            pos_b += 1
        calls = backend.n_calls
        results = backend.forward(steps)
        assert backend.n_calls - calls == (2 if len(steps[1].tokens) > 1 else 1)
        la, lc = results[0], results[-1]
        if len(steps) == 3:
            lb = results[1]
    assert out_a == ea and out_c == ea and out_b == eb[:20]


@pytest.mark.feature("engine")
@needs_shared
def test_all_logits_verifies_a_draft(backend):
    prompt, expected = PROMPTS[1]
    backend.allocate(1, ROW_LEN)
    prefill(backend, 0, prompt)
    logits = backend.forward([Step(0, len(prompt), expected[:5], all_logits=True)])[0]
    assert logits.shape == (5, 512) and logits.dtype == np.float32
    assert logits.argmax(-1).tolist() == expected[1:6]
    # Keep 2 of the 5 (rollback = a lower pos), then continue greedily.
    pos = len(prompt) + 2
    logits = backend.forward([Step(0, pos, [expected[2]])])[0]
    assert greedy(backend, 0, logits, pos + 1, n=10) == expected[3:13]


@pytest.mark.feature("engine")
@needs_shared
def test_save_and_load_row(backend):
    prompt, expected = PROMPTS[2]
    backend.allocate(2, ROW_LEN)
    prefill(backend, 0, prompt)
    state = backend.save_row(0, len(prompt))
    assert state.length == len(prompt) and len(state.keys) == 5
    assert state.keys[0].shape == (4, len(prompt), 8)
    backend.load_row(1, state.trimmed(len(prompt) - 1))
    logits = backend.forward([Step(1, len(prompt) - 1, prompt[-1:])])[0]
    assert greedy(backend, 1, logits, len(prompt)) == expected


@pytest.mark.feature("engine")
@needs_shared
def test_one_call_for_a_batch_of_single_tokens(backend):
    backend.allocate(3, ROW_LEN)
    for row in range(3):
        prefill(backend, row, PROMPTS[row][0])
    before = backend.n_calls
    out = backend.forward([Step(r, len(PROMPTS[r][0]), [PROMPTS[r][1][0]]) for r in (2, 0, 1)])
    assert backend.n_calls == before + 1
    assert [o.shape for o in out] == [(1, 512)] * 3
    assert [int(o.argmax()) for o in out] == [PROMPTS[r][1][1] for r in (2, 0, 1)]


@pytest.mark.feature("engine")
@needs_shared
def test_bad_steps_are_rejected(backend):
    backend.allocate(2, 8)
    with pytest.raises(ValueError, match="beyond"):
        backend.forward([Step(0, 5, [1, 2, 3, 4])])
    with pytest.raises(ValueError, match="outside"):
        backend.forward([Step(2, 0, [1])])
    with pytest.raises(ValueError, match="two steps"):
        backend.forward([Step(0, 0, [1]), Step(0, 1, [1])])


@pytest.mark.feature("backend")
@pytest.mark.parametrize("device, package", [("cuda", "onnxruntime-gpu"), ("dml", "onnxruntime-directml")])
def test_missing_provider(device, package, tmp_path):
    if backends.DEVICES[device] in backends.onnx_runtime.ort.get_available_providers():
        pytest.skip(f"this onnxruntime has the {device} provider")
    with pytest.raises(ProviderUnavailable, match=package):
        backends.load(tmp_path, device=device)  # the provider is checked before the model


@pytest.mark.feature("backend")
def test_missing_model(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        backends.load(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="model.onnx"):
        backends.load(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="cannot load"):
        backends.load(tmp_path)


@pytest.mark.feature("engine")
@needs_shared
def test_decode_spans_skip_rows_too_full_for_a_dummy(backend):
    # With RoPE inside GQA the mask can be no wider than the context; an idle row filled
    # to that width has no spare column, so the batch is split around it.
    backend.allocate(5, 16)
    backend._width = 10
    backend._high[:] = [0, 12, 3, 10, 0]
    assert backend._spans([0, 2, 4]) == [(0, 1), (2, 3), (4, 5)]
    assert backend._spans([0, 1, 2]) == [(0, 3)]
    assert backend._spans([1, 2]) == [(1, 3)]
    assert backend._spans([2, 4]) == [(2, 3), (4, 5)]


@pytest.mark.feature("engine")
def test_both_layouts_of_the_shipped_draft_agree():
    """The embedded draft (builder GQA layout) and its plain-layout export under
    tests/fixtures are the same weights: batched greedy decoding gives the same ids."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    gqa = backends.load(root / "refserver" / "models" / "draft", threads=1)
    plain = backends.load(root / "tests" / "fixtures" / "draft-plain", threads=1)
    assert (gqa.info.layout, gqa.info.uses_position_ids) == ("gqa", False)
    assert (plain.info.layout, plain.info.uses_position_ids) == ("plain", True)
    prompts = [[0, 44, 224, 835, 76], [0, 320, 224, 384, 707, 224, 286, 17, 40]]
    outputs = []
    for b in (gqa, plain):
        b.allocate(2, 64)
        pos = [len(p) for p in prompts]
        last = [int(b.forward([Step(row, 0, p)])[0][-1].argmax()) for row, p in enumerate(prompts)]
        ids = [[t] for t in last]
        for _ in range(20):
            logits = b.forward([Step(row, pos[row], [ids[row][-1]]) for row in range(2)])
            for row in range(2):
                pos[row] += 1
                ids[row].append(int(logits[row][-1].argmax()))
        outputs.append(ids)
    assert outputs[0] == outputs[1]
