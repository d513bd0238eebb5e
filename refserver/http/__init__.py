"""Tornado HTTP layer: routes, handlers, SSE.  No numpy or onnxruntime here (DESIGN.md)."""
