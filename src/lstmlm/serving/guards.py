"""What stands between a request and the model: API keys, the body's size and time bound, the model's lock, and
the error body each route family answers with.

Two error shapes, chosen by path (`error_payload`): the OpenAI-compatible routes (/v1/completions, /v1/models)
answer `{"error": {"message", "type", "param", "code"}}`, the contract's shape, which the official clients turn
into their exceptions; the native routes (/v1/next, /v1/generate, /v1/score) keep their documented
`{"error": "one line"}` (plus "details" for a bad field).
"""

import asyncio
import contextlib
import hmac
import json
import threading
import time

OPENAI_PATHS = ("/v1/completions", "/v1/models")
# The contract's error "type" for each status the server answers on its routes.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               405: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}


def is_openai_path(path):
    """True for the routes that speak the OpenAI contract (and its error shape)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in OPENAI_PATHS)


def error_payload(path, status, message, param=None, code=None):
    """The JSON body of an error on `path`, in that route family's shape.

    Example:
        >>> error_payload("/v1/next", 413, "request body over 10 bytes")
        {'error': 'request body over 10 bytes'}
        >>> error_payload("/v1/completions", 404, "no model 'x'", "model", "model_not_found")["error"]["type"]
        'invalid_request_error'
    """
    if not is_openai_path(path):
        return {"error": message}
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


async def send_error(send, path, status, message, code=None, headers=()):
    """Answer an ASGI request with an error (from a middleware: before the app has read anything)."""
    payload = json.dumps(error_payload(path, status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": payload})


class ApiKeys:
    """ASGI middleware: with keys, every /v1/* request needs `Authorization: Bearer KEY` (else 401); /health
    and the page stay open. Keys are compared in constant time (hmac.compare_digest, against every key, so the
    time says nothing about which key or how much of one matched) and are never logged or echoed.
    """

    def __init__(self, app, keys=()):
        self.app, self.keys = app, [key.encode() for key in keys]

    def accepts(self, authorization):
        """True when the Authorization header's value (bytes or None) carries one of the keys."""
        scheme, _, given = (authorization or b"").partition(b" ")
        given = given.strip() if scheme.lower() == b"bearer" else b""
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self.accepts(dict(scope["headers"]).get(b"authorization")):
            return await self.app(scope, receive, send)
        await send_error(send, scope["path"], 401, "missing or wrong API key (send Authorization: Bearer KEY)",
                         code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])


class BodyLimit:
    """ASGI middleware: bound every request's body in size (413) and in time (408) before the app parses it.

    The body is read here (at most max_bytes + one chunk) and replayed to the app, so a body without a
    Content-Length header (chunked) is bounded too. The time bound starts when the headers have arrived
    (`scope["state"]["deadline"]`, which the endpoints read too): a client that sends its body a byte at a time
    holds a connection for at most `seconds`, never the model.
    """

    def __init__(self, app, max_bytes, seconds):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.seconds
        scope.setdefault("state", {})["deadline"] = deadline
        path, too_big = scope["path"], f"request body over {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_error(send, path, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return await send_error(send, path, 408, f"the request body did not arrive within {self.seconds:g} s")
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await send_error(send, path, 413, too_big)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for a disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class Busy(Exception):
    """The model stayed busy with other requests until this request's time bound: a 503 (retry later)."""


def deadline_of(request):
    """The request's time bound (a `time.monotonic()` value) that BodyLimit set when its headers arrived."""
    return request.scope.get("state", {}).get("deadline", time.monotonic())


class ModelGate:
    """One loaded model behind one lock: Keras/torch model calls are not thread-safe, and the endpoints run in a
    thread pool. `hold(deadline)` waits for the lock until the request's time bound at most.

    Example:
        >>> gate = ModelGate("a model")
        >>> with gate.hold(time.monotonic() + 1) as model:
        ...     model
        'a model'
    """

    def __init__(self, language_model):
        self.language_model = language_model
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, deadline):
        """The model, with the lock held; Busy if the lock did not come free before `deadline`."""
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise Busy()
        try:
            yield self.language_model
        finally:
            self.lock.release()
