"""llama-server's flag names that refserver accepts but that mean nothing here.

A command line written for llama-server (`-ngl 99 -fa on --cont-batching --no-webui`)
starts refserver unchanged: the flags that act here are defined in `cli.py`; every other
llama-server flag is accepted, with its value when it takes one, and named in one log
line at start-up.  Flags that fetch a model from a hub fail with a message saying how
to pass a local directory, and the TLS flags fail rather than serve plain HTTP to a
client that expects HTTPS.

The names are those of llama.cpp's `tools/server/README.md` (2026), plus a few older
spellings users still type (`--mlock`, `--no-mmap`).
"""

from __future__ import annotations

import argparse

# nargs: 0 = a switch, 1 = one value, "?" = an optional value (`-fa` alone or `-fa on`),
# 2 = two values (`--control-vector-layer-range START END`).
_SWITCHES = """
-cl --cache-list | --completion-bash | --swa-full | --perf --no-perf | -e --escape --no-escape
-kvo --kv-offload -nkvo --no-kv-offload | --repack -nr --no-repack | --no-host | --list-devices
-cmoe --cpu-moe | --check-tensors | --op-offload --no-op-offload | --log-disable
--log-jsonl --no-log-jsonl | --offline | --log-prefix --no-log-prefix
--log-timestamps --no-log-timestamps | -bs --backend-sampling | --cache-idle-slots --no-cache-idle-slots
-sp --special | --warmup --no-warmup | --spm-infill
-cb --cont-batching -nocb --no-cont-batching | --mmproj-auto --no-mmproj --no-mmproj-auto
--mmproj-offload --no-mmproj-offload | --reuse-port | --cors-credentials --no-cors-credentials
--ui-mcp-proxy --webui-mcp-proxy --no-ui-mcp-proxy --no-webui-mcp-proxy | -ag --agent -no-ag --no-agent
--embedding --embeddings | --rerank --reranking | --cache-prompt --no-cache-prompt
--models-autoload --no-models-autoload | --reasoning-preserve --no-reasoning-preserve
--skip-chat-parsing --no-skip-chat-parsing | --prefill-assistant --no-prefill-assistant
--lora-init-without-apply | --spec-draft-cpu-moe -cmoed --cpu-moe-draft
--spec-draft-backend-sampling --no-spec-draft-backend-sampling | --spec-default
--mmap --no-mmap | --mlock
"""

_VALUED = """
-tb --threads-batch | -C --cpu-mask | -Cr --cpu-range | --cpu-strict | --prio | --poll
-Cb --cpu-mask-batch | -Crb --cpu-range-batch | --cpu-strict-batch | --prio-batch | --poll-batch
-ub --ubatch-size | --keep | --rope-scaling | --rope-scale | --rope-freq-base | --rope-freq-scale
--yarn-orig-ctx | --yarn-ext-factor | --yarn-attn-factor | --yarn-beta-slow | --yarn-beta-fast
-ctk --cache-type-k | -ctv --cache-type-v | -dt --defrag-thold | --rpc | -lm --load-mode
-lzm --lazy-mode | --numa | -dev --device | -ot --override-tensor | -ncmoe --n-cpu-moe
--moe-cache-mib | -ncffn --n-cpu-ffn | -ngl --gpu-layers --n-gpu-layers | -sm --split-mode
-ts --tensor-split | -mg --main-gpu | -fitt --fit-target | -fitc --fit-ctx | --override-kv
--lora | --lora-scaled | --control-vector | --control-vector-scaled | -hft --hf-token
--log-file | -lv --verbosity --log-verbosity | --spec-draft-type-k -ctkd --cache-type-k-draft
--spec-draft-type-v -ctvd --cache-type-v-draft | --samplers | --sampler-seq --sampling-seq
-l --logit-bias | --grammar | --grammar-file | -j --json-schema | -jf --json-schema-file
--dry-sequence-breaker | -lcs --lookup-cache-static | -lcd --lookup-cache-dynamic
--kv-unified-per-slot | -ctxcp --ctx-checkpoints --swa-checkpoints | -cms --checkpoint-min-step
-r --reverse-prompt | --pooling | -mm --mmproj | -mmdev --mmproj-device | --image-min-tokens
--image-max-tokens | --mtmd-batch-max-tokens | --video-fps | --video-timestamp-interval
--video-ffmpeg-dir | --embd-normalize | --path | --api-prefix
--ui-config --webui-config | --ui-config-file --webui-config-file | --tools | --tools-runtime
--mcp-servers-config | --mcp-servers-json | --chat-template-kwargs
--sse-ping-interval | --threads-http | --cache-reuse | --slot-save-path | --media-path
--models-dir | --models-preset | --models-max | --reasoning-effort
--reasoning-budget-message | -sps --slot-prompt-similarity
--sleep-idle-seconds | --log-prompts-dir | --spec-draft-threads-batch -tbd --threads-batch-draft
--spec-draft-cpu-mask -Cd --cpu-mask-draft | --spec-draft-cpu-range -Crd --cpu-range-draft
--spec-draft-cpu-strict --cpu-strict-draft | --spec-draft-prio --prio-draft
--spec-draft-poll --poll-draft | --spec-draft-cpu-mask-batch -Cbd --cpu-mask-batch-draft
--spec-draft-cpu-strict-batch --cpu-strict-batch-draft | --spec-draft-prio-batch --prio-batch-draft
--spec-draft-poll-batch --poll-batch-draft | --spec-draft-override-tensor -otd --override-tensor-draft
--spec-draft-n-cpu-moe --spec-draft-ncmoe -ncmoed --n-cpu-moe-draft | --spec-synth-len
--spec-synth-rates | --spec-draft-p-split --draft-p-split | --spec-draft-sampling
--spec-draft-device -devd --device-draft | --spec-draft-ngl -ngld --gpu-layers-draft --n-gpu-layers-draft
--spec-type | --spec-ngram-mod-n-min | --spec-ngram-mod-n-max | --spec-ngram-mod-n-match
--spec-ngram-simple-size-n | --spec-ngram-simple-size-m | --spec-ngram-simple-min-hits
--spec-ngram-map-k-size-n | --spec-ngram-map-k-size-m | --spec-ngram-map-k-min-hits
--spec-ngram-map-k4v-size-n | --spec-ngram-map-k4v-size-m | --spec-ngram-map-k4v-min-hits
--spec-ngram-size-n | --spec-ngram-size-m | --spec-ngram-min-hits
"""

_OPTIONAL_VALUE = "-fa --flash-attn | -fit --fit | --log-colors"

_TWO_VALUES = "--control-vector-layer-range"

# Flags that fetch a model over the network: refserver never downloads.
_HUB = """
-hf -hfr --hf-repo | -hff --hf-file | -mu --model-url | -dr --docker-repo | -mmu --mmproj-url
--spec-draft-hf -hfd -hfrd --hf-repo-draft
"""
_HUB_PRESETS = """
--embd-gemma-default | --fim-qwen-1.5b-default | --fim-qwen-3b-default | --fim-qwen-7b-default
--fim-qwen-7b-spec | --fim-qwen-14b-spec | --fim-qwen-30b-default | --gpt-oss-20b-default
--gpt-oss-120b-default | --vision-gemma-4b-default | --vision-gemma-12b-default
"""

_TLS = "--ssl-key-file | --ssl-cert-file"

HUB_MESSAGE = ("{flag} downloads a model from a hub, which refserver never does: download the model "
               "yourself, export it to ONNX (model.onnx, tokenizer.json, tokenizer_config.json, "
               "config.json in one directory) and pass that directory with -m DIR")
TLS_MESSAGE = ("{flag}: refserver serves plain HTTP only; put a TLS-terminating reverse proxy "
               "(nginx, caddy) in front of it")


def _groups(table: str) -> list[list[str]]:
    """`-a --long | --other` → [["-a", "--long"], ["--other"]] (whitespace and newlines free)."""
    return [g.split() for g in table.replace("\n", " | ").split("|") if g.split()]


class _Inert(argparse.Action):
    """Records `flag [value]` in `namespace.inert_flags`; nothing else happens."""

    def __call__(self, parser, namespace, values, option_string=None):
        values = values if isinstance(values, list) else [] if values is None else [values]
        if option_string in ("-hft", "--hf-token"):
            values = ["***"] * len(values)  # a secret: never in the logs
        shown = " ".join([option_string, *values])
        namespace.inert_flags = [*getattr(namespace, "inert_flags", []), shown]


class _Refused(argparse.Action):
    """Fails the command line with this flag's message."""

    def __init__(self, *args, message: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.message.format(flag=option_string))


def add_llama_flags(parser: argparse.ArgumentParser) -> None:
    """Every llama-server flag that refserver has no use for, in one help group."""
    g = parser.add_argument_group(
        "llama-server flags with no effect here",
        "accepted (with their value) so llama-server command lines work, and named in one log line "
        "at start-up; the model-hub flags (-hf, --hf-repo, -hff, -mu, ...) and --ssl-* fail with a "
        "message instead")
    hidden = argparse.SUPPRESS  # ~200 names: --help lists the group, not each flag
    for names in _groups(_SWITCHES):
        g.add_argument(*names, nargs=0, action=_Inert, default=argparse.SUPPRESS, help=hidden)
    for table, nargs in ((_VALUED, None), (_OPTIONAL_VALUE, "?"), (_TWO_VALUES, 2)):
        for names in _groups(table):
            g.add_argument(*names, nargs=nargs, action=_Inert, default=argparse.SUPPRESS, help=hidden)
    for table, nargs, message in ((_HUB, None, HUB_MESSAGE), (_HUB_PRESETS, 0, HUB_MESSAGE),
                                  (_TLS, None, TLS_MESSAGE)):
        for names in _groups(table):
            g.add_argument(*names, nargs=nargs, action=_Refused, message=message,
                           default=argparse.SUPPRESS, help=hidden)
