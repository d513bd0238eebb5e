"""Model runtimes behind one interface (`backends.base.Backend`).

    backend = backends.load("models/stories260K/onnx-genai", device="cpu", threads=2)
"""

from __future__ import annotations

import os

from .base import Backend, KVState, ModelInfo, Step
from .errors import BackendError, ModelLoadError, ProviderUnavailable
from .onnx_runtime import DEVICES, OnnxBackend

__all__ = ["DEVICES", "Backend", "BackendError", "KVState", "ModelInfo", "ModelLoadError",
           "OnnxBackend", "ProviderUnavailable", "Step", "load"]


def load(model_dir: str | os.PathLike, device: str = "cpu", threads: int = 0,
         filename: str | None = None) -> Backend:
    """Load the ONNX model in `model_dir` on `device` ("cpu", "cuda" or "dml"); `filename`
    names the graph when the folder holds several (default: see `onnx_layouts.model_file`).

    `threads` > 0 sets ONNX Runtime's intra-op threads; 0 uses every core (os.cpu_count()).
    Raises ProviderUnavailable when this onnxruntime build lacks the device's provider,
    ModelLoadError when the folder or graph cannot be used.
    """
    return OnnxBackend(model_dir, device=device, threads=threads, filename=filename)
