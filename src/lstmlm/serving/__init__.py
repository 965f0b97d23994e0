"""The serving stage: HTTP over the inference stage.

Owns `lstmlm serve` and the FastAPI application (server.py, with its own command-line flags), lstmlm's own routes
(native_api.py), the OpenAI-compatible completions and models routes (openai_api.py), what guards the model
(guards.py: API keys, body limits, the model's lock, the error shapes), the micro-batcher that runs concurrent
requests as one batch (micro_batching.py) and the web page (web/). May import inference and the shared top-level
modules; nothing imports serving but the CLI's dispatch by name.
"""
