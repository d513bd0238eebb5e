"""Pydantic request models, one module per endpoint family, each converting into the
engine's `GenerationRequest`."""
