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
    chat_templates: dict[str, str] = field(default_factory=dict)  # the model's own, by name
    genai_config: dict = field(default_factory=dict)
    graph: str | None = None  # the .onnx file named with `-m DIR/FILE.onnx`, else None

    @property
    def chat_template(self) -> str | None:
        """The model's default template (`default`, else the first named one)."""
        return self.chat_templates.get("default") or next(iter(self.chat_templates.values()), None)

    @property
    def n_ctx_train(self) -> int:
        """The trained context: genai_config's `context_length`, else config.json's, else
        tokenizer_config's `model_max_length`; 0 when none says."""
        value = self.genai_config.get("model", {}).get("context_length")
        if isinstance(value, int) and value > 0:
            return value
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
    graph = None
    if model:
        path = Path(model).expanduser()
        if path.is_file() and path.suffix == ".onnx":  # -m DIR/FILE.onnx: that graph in DIR
            path, graph = path.parent, path.name
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
        chat_templates=_model_chat_templates(path, tokenizer_config),
        genai_config=_read_json(path / "genai_config.json"),
        graph=graph,
    )


def search_defaults(model: ModelDir) -> dict:
    """genai_config.json's `search` values the server takes as its defaults: `temperature`,
    `top_k`, `top_p`, and `max_length` (the context a request may fill), where well typed."""
    search = model.genai_config.get("search", {})
    checks = {"temperature": lambda v: isinstance(v, (int, float)) and v >= 0,
              "top_k": lambda v: isinstance(v, int) and v >= 0,
              "top_p": lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
              "max_length": lambda v: isinstance(v, int) and v > 0}
    found = {k: search[k] for k, ok in checks.items()
             if k in search and not isinstance(search[k], bool) and ok(search[k])}
    if "max_length" in found and model.n_ctx_train:
        found["max_length"] = min(found["max_length"], model.n_ctx_train)
    return found


def check_ctx_size(model: ModelDir, ctx_size: int, n_slots: int, kv_unified: bool) -> None:
    """Refuse a `-c` the slots could only use past the model's trained context (positions past
    it were never trained, and a RoPE cache built for that length ends there): with unified KV
    each slot holds up to that context, so `-c` may reach slots x trained; split, each gets
    `-c / -np`."""
    trained = model.n_ctx_train
    if not trained:
        return
    if kv_unified and ctx_size > trained * n_slots:
        slots = "" if n_slots == 1 else f" x {n_slots} slots"
        raise ModelDirError(f"-c {ctx_size} is above the context {model.path.name} was trained for "
                            f"({trained} positions{slots}); pass -c {trained * n_slots} or less")
    if not kv_unified and ctx_size // n_slots > trained:
        raise ModelDirError(f"-c {ctx_size} gives each of {n_slots} slots {ctx_size // n_slots} positions with "
                            f"--no-kv-unified, above the context {model.path.name} was trained for ({trained} "
                            f"positions); pass -c {trained * n_slots} or less")


def _model_chat_templates(path: Path, tokenizer_config: dict) -> dict[str, str]:
    """The model's templates by name, as transformers loads them: `chat_template` of
    tokenizer_config.json (a string, or a list of {name, template}), then the newer layout's
    `chat_template.jinja` beside it (the default; it wins) and
    `additional_chat_templates/NAME.jinja`."""
    templates: dict[str, str] = {}
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        templates.update((t["name"], t["template"]) for t in template
                         if isinstance(t, dict) and isinstance(t.get("name"), str)
                         and isinstance(t.get("template"), str) and t["template"].strip())
    elif isinstance(template, str) and template.strip():
        templates["default"] = template
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra = path / "additional_chat_templates"
    if extra.is_dir():
        for file in sorted(extra.glob("*.jinja")):
            templates[file.stem] = file.read_text(encoding="utf-8")
    return templates


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path} is not valid JSON ({exc}); fix or remove the file") from exc
    return data if isinstance(data, dict) else {}
