"""Find the model directory and read what the server needs from its JSON files.

A model directory holds `model.onnx` (+ data), `tokenizer.json` and the Hugging Face
side files: `config.json` (context length, sizes), `tokenizer_config.json` (special
tokens, `chat_template`) and `generation_config.json` (end-of-generation ids, which the
tokenizer reads).  With no `-m`, the server uses the default model shipped inside the
package (`refserver/models/chat`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent / "models" / "chat"


class ModelDirError(Exception):
    """The model directory is missing or unusable; the message names the fix."""


@dataclass
class ModelDir:
    path: Path
    alias: str
    config: dict = field(default_factory=dict)
    tokenizer_config: dict = field(default_factory=dict)
    chat_template: str | None = None  # the model's own template, if it has one

    @property
    def n_ctx_train(self) -> int:
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = self.config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        value = self.tokenizer_config.get("model_max_length")
        if isinstance(value, int) and 0 < value < 10**7:
            return value
        return 0


def resolve_model_dir(model: str | None, alias: str | None = None, flag: str = "-m") -> ModelDir:
    """The model directory given with `-m`, or the embedded default.

    Raises ModelDirError with a one-line message when the directory or its
    `tokenizer.json` is missing.
    """
    if model:
        path = Path(model).expanduser()
        if path.is_file() and path.suffix == ".onnx":
            path = path.parent  # `-m dir/model.onnx`, as llama-server users pass a .gguf file
        elif path.is_file():
            raise ModelDirError(f"{flag} {model} is a file; refserver serves ONNX model directories: pass "
                                f"{flag} DIR with a directory holding model.onnx and tokenizer.json")
        elif not path.exists():
            raise ModelDirError(f"{flag} {model}: no such file or directory; pass {flag} DIR with a directory "
                                "holding model.onnx and tokenizer.json")
        elif not path.is_dir():
            raise ModelDirError(f"{flag} {model} is not a directory; pass {flag} DIR with a directory "
                                "holding model.onnx and tokenizer.json")
    else:
        path = EMBEDDED_MODEL
        if not path.is_dir():
            raise ModelDirError(f"no embedded model at {path}; pass -m DIR with a directory holding "
                                "model.onnx and tokenizer.json")
    path = path.resolve()
    if not (path / "tokenizer.json").is_file():
        raise ModelDirError(f"{path} has no tokenizer.json; pass {flag} DIR with a complete model directory")
    tokenizer_config = _read_json(path / "tokenizer_config.json")
    return ModelDir(
        path=path,
        alias=alias or path.name,
        config=_read_json(path / "config.json"),
        tokenizer_config=tokenizer_config,
        chat_template=_model_chat_template(path, tokenizer_config),
    )


def _model_chat_template(path: Path, tokenizer_config: dict) -> str | None:
    """`chat_template` of tokenizer_config.json (a string, or a list of named templates),
    else a `chat_template.jinja` file next to it."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template.strip():
        return template
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path} is not valid JSON ({exc}); fix or remove the file") from exc
    return data if isinstance(data, dict) else {}
