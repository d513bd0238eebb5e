"""Train the embedded models' byte-level BPE tokenizer on the generated corpus.

Writes tokenizer.json, tokenizer_config.json (with the chat template) and
special_tokens_map.json.  Deterministic: the corpus is a function of its seed and the
trainer runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # BPE merge ties are resolved deterministically on one thread

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tools.corpus import BOS, EOS, TEMPLATE_PATH, Corpus

SPECIAL = [BOS, EOS, "<|im_start|>", "<|im_end|>"]
TOOL_MARKERS = ["<tool_call>", "</tool_call>"]


def train(out: Path, vocab_size: int, n_docs: int, seed: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Spaces are tokens of their own, so a word is the same tokens after a space, a quote
    # or a bracket: the model copies "Paris" from a question into JSON token for token.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" "), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = Corpus(seed)
    texts = (corpus.example(i).text.replace(BOS, "").replace(EOS, "") for i in range(n_docs))
    tok.train_from_iterator(texts, trainer=trainer, length=n_docs)
    # Tool-call markers: added tokens that are not special, so decoding keeps them.
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in TOOL_MARKERS])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": None,
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": TEMPLATE_PATH.read_text(),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}, indent=2) + "\n")
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--docs", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    tok = train(args.out, args.vocab_size, args.docs, args.seed)
    print(f"vocab {tok.get_vocab_size()} written to {args.out}")


if __name__ == "__main__":
    main()
