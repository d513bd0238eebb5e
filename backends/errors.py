"""What a backend raises.

    BackendError                 anything the runtime reports while serving (a failed run, a bad step)
    ├── ModelLoadError           the model folder or its graph cannot be used
    └── ProviderUnavailable      the requested device's execution provider is missing

Backends never import `refserver`; the server maps these to its own errors at start-up
(a clear message and exit) or per request (a 500).
"""

from __future__ import annotations


class BackendError(Exception):
    """A runtime failure; the message says what was being done and what went wrong."""


class ModelLoadError(BackendError):
    """The model folder, its `model.onnx` or its graph cannot be used."""


class ProviderUnavailable(BackendError):
    """The execution provider for the requested device is not in this onnxruntime build."""
