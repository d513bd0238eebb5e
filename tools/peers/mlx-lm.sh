#!/usr/bin/env bash
# Install and start mlx-lm's OpenAI-compatible server (CPU build of MLX) on stories260K's HF dir.
#   tools/peers/mlx-lm.sh install          # once: a venv at $VENV
#   tools/peers/mlx-lm.sh serve [PORT]     # foreground; PORT defaults to 8411
# stories260K ships no chat template; the server gets Qwen2.5's (ChatML + <tool_call>), so mlx-lm's
# chat and its json_tools parser work as with any ChatML model. HF_HUB_CACHE must point at an
# existing empty folder with HF_HUB_OFFLINE=1, or /v1/models crashes mid-response.
set -euo pipefail
VENV=${VENV:-/work/venvs/mlx}
SHARED=${REFSERVER_SHARED:-$(cd "$(dirname "$0")/../../.." && pwd)/shared}
MODEL=${MODEL:-$SHARED/models/stories260K/hf}
TEMPLATE=${TEMPLATE:-$SHARED/templates/Qwen-Qwen2.5-7B-Instruct.jinja}
case "${1:-serve}" in
  install)
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install 'mlx[cpu]==0.32.4' 'mlx-lm==0.32.2' ;;
  serve)
    cache=$(mktemp -d)
    HF_HUB_CACHE=$cache HF_HUB_OFFLINE=1 exec "$VENV/bin/mlx_lm.server" --model "$MODEL" \
      --host 127.0.0.1 --port "${2:-8411}" --chat-template "$(cat "$TEMPLATE")" ;;
  *) echo "usage: $0 install|serve [PORT]" >&2; exit 2 ;;
esac
