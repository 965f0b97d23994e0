"""`lstmlm serve RUN_DIR`: next-word suggestions, generation and scoring over HTTP, and a web page.

    GET  /             the page (src/lstmlm/web/index.html: suggestions as you type, continue, score)
    GET  /health       model name, vocabulary size, parameter count, default_num_words, limits
    POST /v1/next      {"text", "top_k"} -> {"predictions": [{"word", "probability"}], "unknown_words"}
    POST /v1/generate  {"prompt", "num_words", "temperature", "top_k", "top_p", "seed"}
                       -> {"prompt_words", "words", "text", "unknown_words"}
    POST /v1/score     {"text"} -> {"word_scores": [{"word", "log_probability"}], "total_log_probability",
                                    "tokens", "perplexity", "unknown_words"}
    GET  /openapi.json the schema (FastAPI), GET /docs its browsable form

Every answer is the library's result dict as it is (`LanguageModel.predict_next`, `generate`, `score`), so
the keys are those of `lstmlm predict/generate --json`.

Every request is bounded in time (`Limits.max_request_seconds`, default 10 s, from its headers to its answer):
a body still arriving then gets 408; a request still waiting for the model then gets 503 with Retry-After (the
model was busy with others); /v1/generate stops generating there and answers the words so far with
finish_reason "time_limit". SIGTERM (or Ctrl-C) stops listening, lets the requests in flight finish, then exits.
The listening socket is TCP with TCP_NODELAY, so keep-alive clients do not wait for delayed ACKs.

The model is loaded once, before the server listens, in the precision chosen by `--precision` (else the one
saved in the run: lstmlm/precision.py); requests name no files. Keras/torch model calls are not thread-safe, so
every call holds one lock (FastAPI runs the endpoints in a thread pool). /v1/next requests that arrive within
`--batch-window-ms` of each other run as one call in one worker thread (micro_batching.py); in int8 their
softmax-layer products run as one (LanguageModel.predict_next_batch), in float32/bfloat16 each row alone (BLAS
rounds by the number of rows): every answer is bit-identical to `predict_next`'s, whichever requests shared its
batch. `--no-micro-batching` answers them one at a time under the lock. Prompts go through the model's prefix-state cache, so a text that grows by a word costs a word. Every
error a client can cause is a 4xx with a JSON body {"error": "one line", "details": [...]}; never a traceback.

FastAPI and uvicorn are the `serve` extra: they are imported inside functions so `lstmlm --help` stays fast
and works without them.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import sys
import threading
import time
from importlib import resources

from lstmlm.errors import LstmlmError

INSTALL_HINT = "lstmlm serve needs the serve extra: pip install 'lstmlm[serve]'"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for. Bounds keep one request from holding the model for long.

    Example:
        >>> Limits(max_num_words=100).max_top_k
        100
    """

    max_request_bytes: int = 64 * 1024
    max_text_characters: int = 10_000
    max_text_words: int = 1_000
    max_num_words: int = 500  # /v1/generate: words to generate
    max_top_k: int = 100
    max_temperature: float = 10.0
    max_request_seconds: float = 10.0  # from the request's headers to its answer: see `Busy` and BodyLimit


@dataclasses.dataclass(frozen=True)
class Batching:
    """How /v1/next requests are grouped: within `window_ms` of the first, at most `max_batch`; or not at all.

    Example:
        >>> Batching(enabled=False).max_batch
        32
    """

    enabled: bool = True
    window_ms: float = 1.5
    max_batch: int = 32


# ---- request bodies -------------------------------------------------------------------------------------
def _request_models(limits):
    """Pydantic models of the three request bodies, bounded by `limits` (built per app: limits may differ)."""
    from pydantic import BaseModel, ConfigDict, Field

    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS

    # extra="forbid": a misspelt field ("topk") is an error, not silently the default.
    strict = ConfigDict(extra="forbid", allow_inf_nan=False)
    text_field = dict(max_length=limits.max_text_characters)

    class NextRequest(BaseModel):
        model_config = strict
        text: str = Field(description="the words so far", **text_field)
        top_k: int = Field(5, ge=1, le=limits.max_top_k, description="how many words to list")

    class GenerateRequest(BaseModel):
        model_config = strict
        prompt: str = Field("", description="words to continue (empty: a new sentence)", **text_field)
        num_words: int = Field(DEFAULT_NUM_WORDS, ge=0, le=limits.max_num_words,
                               description="how many words to generate")
        temperature: float = Field(1.0, ge=0, le=limits.max_temperature, description="0 = greedy")
        top_k: int = Field(0, ge=0, le=limits.max_top_k, description="sample among the k most likely (0 = all)")
        top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold (1 = off)")
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same text")

    class ScoreRequest(BaseModel):
        model_config = strict
        text: str = Field(description="the text to score", min_length=1, **text_field)

    return NextRequest, GenerateRequest, ScoreRequest


class Busy(Exception):
    """The model stayed busy with other requests until this request's time bound: a 503 (retry later)."""


def deadline_of(request):
    """The request's time bound (a `time.monotonic()` value) that BodyLimit set when its headers arrived."""
    return request.scope.get("state", {}).get("deadline", time.monotonic())


def _answer(function, *args):
    """function(*args), or the LstmlmError it raised (the micro-batcher raises it in that request's thread)."""
    try:
        return function(*args)
    except LstmlmError as error:
        return error


def _check_word_count(text, limits):
    count = len(text.split())
    if count > limits.max_text_words:
        raise LstmlmError(f"the text has {count} words; the limit is {limits.max_text_words}")


# ---- the body-size limit --------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: bound every request's body in size (413) and in time (408) before the app parses it.

    The body is read here (at most max_bytes + one chunk) and replayed to the app, so a body without a
    Content-Length header (chunked) is bounded too. The time bound starts when the headers have arrived
    (`scope["state"]["deadline"]`, which the endpoints read too): a client that sends its body a byte at a time
    holds a connection for at most `seconds`, never the model.
    """

    def __init__(self, app, max_bytes, seconds=Limits.max_request_seconds):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.seconds
        scope.setdefault("state", {})["deadline"] = deadline
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return await self._refuse(send, 408, f"the request body did not arrive within {self.seconds:g} s")
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for a disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send, status, reason):
        payload = json.dumps({"error": reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


# ---- the app --------------------------------------------------------------------------------------------
def _validation_message(errors):
    """One line from pydantic's error list, e.g. "body.top_k: Input should be less than or equal to 100"."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid request')}{more}"


def create_app(language_model, limits=Limits(), batching=Batching()):
    """The FastAPI app serving one loaded model.

    Args:
        language_model: a `lstmlm.inference.language_model.LanguageModel` (from `load(run_dir)`), loaded once.
        limits: the request bounds.
        batching: micro-batching of /v1/next.

    Example:
        >>> app = create_app(load("runs/tiny"))                  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)        # doctest: +SKIP
    """
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException

    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS
    from lstmlm.serving.micro_batching import MicroBatcher

    NextRequest, GenerateRequest, ScoreRequest = _request_models(limits)
    lock = threading.Lock()

    @contextlib.contextmanager
    def model(request):  # the lock, if it comes free before the request's time bound
        if not lock.acquire(timeout=max(0.0, deadline_of(request) - time.monotonic())):
            raise Busy()
        try:
            yield language_model
        finally:
            lock.release()

    def next_batch(requests):  # [(text, top_k)] -> results, run holding the lock (the batcher's gate)
        if language_model.step_model.batch_invariant:  # int8: one softmax-layer product for the batch
            return language_model.predict_next_batch(requests)
        return [_answer(language_model.predict_next, *request) for request in requests]  # each row alone

    batcher = (MicroBatcher(next_batch, batching.window_ms / 1000, batching.max_batch, gate=lock)
               if batching.enabled else None)
    page = resources.files("lstmlm.serving").joinpath("web/index.html").read_text(encoding="utf-8")
    model_name = language_model.run.path.resolve().name  # the directory's name, never the full path
    health = {"status": "ok", "model": model_name, "vocabulary_size": len(language_model.vocabulary),
              "parameters": int(language_model.model.count_params()),
              "hidden_size": language_model.config.hidden_size, "num_layers": language_model.config.num_layers,
              "lowercase": language_model.config.lowercase, "default_num_words": DEFAULT_NUM_WORDS,
              "precision": language_model.precision, "micro_batching": dataclasses.asdict(batching),
              "limits": dataclasses.asdict(limits)}

    app = FastAPI(title="lstmlm", version=__import__("lstmlm").__version__,
                  description=f"Next-word suggestions, generation and scoring with the LSTM model {model_name!r}.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes, seconds=limits.max_request_seconds)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        details = jsonable_encoder(error.errors(), custom_encoder={Exception: str})
        for detail in details:
            detail.pop("input", None)  # the client sent it; echoing up to 64 KiB back helps no one
            detail.pop("url", None)
        if any(detail.get("type") == "json_invalid" for detail in details):  # not JSON at all: a bad request
            reason = details[0].get("ctx", {}).get("error", "JSON decode error")
            return JSONResponse({"error": f"invalid JSON: {reason}", "details": details}, status_code=400)
        return JSONResponse({"error": _validation_message(details), "details": details}, status_code=422)

    @app.exception_handler(LstmlmError)
    async def user_error(request: Request, error: LstmlmError):
        return JSONResponse({"error": str(error)}, status_code=422)

    @app.exception_handler(Busy)
    async def busy(request: Request, error: Busy):  # overloaded, not broken: the client may retry
        return JSONResponse({"error": f"the model was busy for this request's whole time bound "
                                      f"({limits.max_request_seconds:g} s); retry later"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # 404, 405: JSON like the rest
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):  # a bug: the log has the traceback, not the client
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def get_health():
        """The loaded model: name (the run directory's), vocabulary size, parameters, hidden_size, num_layers,
        lowercase, default_num_words (what /v1/generate generates when not told) and the request limits."""
        return health

    @app.post("/v1/next")
    def next_words(request: NextRequest, http: Request):
        """The `top_k` most likely next words after `text`, most likely first: {"predictions": [{"word",
        "probability"}], "unknown_words"}."""
        _check_word_count(request.text, limits)
        if batcher is not None:
            try:
                return batcher.submit((request.text, request.top_k), max(0.0, deadline_of(http) - time.monotonic()))
            except TimeoutError:
                raise Busy() from None
        with model(http) as language:
            return language.predict_next(request.text, request.top_k)

    @app.post("/v1/generate")
    def generate(request: GenerateRequest, http: Request):
        """Continue `prompt` by `num_words` words: {"prompt_words", "words", "text", "unknown_words",
        "finish_reason"}; the same seed (and settings) gives the same text. Generation stops at the request's
        time bound (`limits.max_request_seconds`) with the words so far and finish_reason "time_limit"."""
        _check_word_count(request.prompt, limits)
        with model(http) as language:
            return language.generate(request.prompt, request.num_words, request.temperature, request.top_k,
                                     request.top_p, request.seed, deadline=deadline_of(http))

    @app.post("/v1/score")
    def score(request: ScoreRequest, http: Request):
        """Log-probability (nats) of each word given the words before it: {"word_scores": [{"word",
        "log_probability"}], "total_log_probability", "tokens", "perplexity", "unknown_words"}."""
        _check_word_count(request.text, limits)
        with model(http) as language:
            return language.score(request.text)

    app.state.batcher = batcher  # app.state.batcher.close() stops its worker thread (a daemon otherwise)
    app.state.limits = limits
    return app


# ---- listening ------------------------------------------------------------------------------------------
def listen(host, port):
    """A listening TCP socket, so that a busy port is one clear error (and port 0 picks a free one)."""
    sock = None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on an accepted connection only when its socket says
        # it is TCP. Without it, Nagle's algorithm holds the response's second write (uvicorn sends the headers
        # and the body separately) until the client's delayed ACK, ~40 ms later, on every keep-alive request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
        sock.bind((host, port))
    except OSError as error:
        if sock is not None:
            sock.close()  # not left to the garbage collector (a ResourceWarning)
        raise LstmlmError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    sock.listen(128)
    return sock


def make_server(app, log_level="info"):
    """A uvicorn Server for `app`: `.run(sockets=[listen(host, port)])` serves (in a thread too, as the tests do).

    In the main thread uvicorn catches Ctrl-C, shuts down gracefully, then raises KeyboardInterrupt again.
    """
    import uvicorn

    # SIGTERM / Ctrl-C: stop listening, let every request in flight finish (each is bounded by the app's
    # max_request_seconds), then exit; a second signal forces it.
    limits = getattr(app.state, "limits", Limits())
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=limits.max_request_seconds + 1)
    return uvicorn.Server(config)


def _keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_in_main_thread(server, sock):
    """Serve until SIGINT/SIGTERM: uvicorn drains, then re-raises the signal (Ctrl-C -> KeyboardInterrupt -> the
    CLI's 130; SIGTERM -> the default action, 143).

    Ctrl-C is given a handler of ours first. Otherwise asyncio.run (inside `server.run`) installs its own, which
    uvicorn then re-raises Ctrl-C into as its coroutine ends; when the task had already finished, that handler did
    nothing and the CLI exited 0 (seen once in a full test run under load). Ours always raises KeyboardInterrupt.
    """
    previous = signal.signal(signal.SIGINT, _keyboard_interrupt)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- the CLI verb ---------------------------------------------------------------------------------------
def add_parser(subparsers):
    parser = subparsers.add_parser("serve", help="next-word suggestions over HTTP and a web page",
                                   description="Serve a run directory: JSON endpoints under /v1 and a page at /.")
    parser.add_argument("run_dir")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--max-request-bytes", type=int, default=Limits.max_request_bytes,
                        help=f"largest request body accepted (default {Limits.max_request_bytes})")
    parser.add_argument("--max-request-seconds", type=float, default=Limits.max_request_seconds,
                        help=f"each request's time bound, from its headers to its answer: a body not read by then "
                             f"gets 408, a model busy until then 503, /v1/generate stops there "
                             f"(default {Limits.max_request_seconds:g})")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (info logs every request)")
    parser.add_argument("--micro-batching", default=True, action=argparse.BooleanOptionalAction,
                        help="run /v1/next requests that arrive together as one batch (default on)")
    parser.add_argument("--batch-window-ms", type=float, default=Batching.window_ms,
                        help=f"how long a batch waits for more requests (default {Batching.window_ms} ms)")
    parser.add_argument("--max-batch", type=int, default=Batching.max_batch,
                        help=f"most /v1/next requests in one batch (default {Batching.max_batch})")
    from lstmlm.cli import add_precision

    add_precision(parser)
    parser.set_defaults(run=run_serve)


def run_serve(args):
    """Load the run directory, listen, serve until Ctrl-C (after which the CLI exits with 130)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        raise LstmlmError(INSTALL_HINT) from None
    if not 0 <= args.port <= 65535:
        raise LstmlmError(f"--port must be in 0..65535, got {args.port}")
    if args.max_request_bytes <= 0:
        raise LstmlmError(f"--max-request-bytes must be positive, got {args.max_request_bytes}")
    if not 0 < args.max_request_seconds <= 3600:
        raise LstmlmError(f"--max-request-seconds must be in (0, 3600], got {args.max_request_seconds}")
    if not 0 <= args.batch_window_ms <= 1000 or args.max_batch < 1:
        raise LstmlmError("--batch-window-ms must be in 0..1000 and --max-batch positive")
    from lstmlm.inference.language_model import load

    batching = Batching(args.micro_batching, args.batch_window_ms, args.max_batch)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_request_seconds=args.max_request_seconds)
    app = create_app(load(args.run_dir, args.precision), limits, batching)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"lstmlm: serving {args.run_dir} at http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "::1"):
        print(f"lstmlm: note: {host} is reachable from other machines and there is no authentication",
              file=sys.stderr, flush=True)
    serve_in_main_thread(make_server(app, args.log_level), sock)
    return 0
