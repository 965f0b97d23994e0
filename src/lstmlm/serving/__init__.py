"""The serving stage: HTTP over the inference stage.

Owns the FastAPI application and `lstmlm serve` (server.py, with its own command-line flags), the micro-batcher
that runs concurrent requests as one batch (micro_batching.py) and the web page (web/). May import inference and
the shared top-level modules; nothing imports serving but the CLI's dispatch by name.
"""
