"""`lstmlm serve RUN [RUN ...]`: next-word suggestions, generation, scoring and OpenAI-compatible completions over
HTTP, and a web page.

    GET  /                the page (web/index.html: suggestions as you type, continue (streamed), score)
    GET  /health          model name, vocabulary size, parameter count, default_num_words, limits (always open)
    POST /v1/next         {"text", "top_k"} -> {"predictions": [{"word", "probability"}], "unknown_words"}
    POST /v1/generate     {"prompt", "num_words", "temperature", "top_k", "top_p", "seed"}
                          -> {"prompt_words", "words", "text", "unknown_words", "finish_reason"}
    POST /v1/score        {"text"} -> {"word_scores": [{"word", "log_probability"}], "total_log_probability",
                                       "tokens", "perplexity", "unknown_words"}
    POST /v1/completions  the OpenAI completions contract, plain or streamed (openai_api.py, docs/serve.md)
    GET  /v1/models[/ID]  the served runs, in the contract's shape
    GET  /openapi.json    the schema (FastAPI), GET /docs its browsable form

The native routes (native_api.py) answer the library's result dicts as they are (`LanguageModel.predict_next`,
`generate`, `score`), so the keys are those of `lstmlm predict/generate --json`; their errors are 4xx
{"error": "one line", "details": [...]}. The OpenAI routes answer in the contract's shapes, errors too
(`{"error": {"message", "type", "param", "code"}}`, guards.py). Never a traceback.

With `--api-key KEY` (or $LSTMLM_API_KEY) every /v1/* route needs `Authorization: Bearer KEY` (guards.ApiKeys);
/health and the page stay open. Beyond loopback without a key the server warns, or with `--require-key` refuses.

Every request is bounded in time (`Limits.max_request_seconds`, default 10 s, from its headers to its answer):
a body still arriving then gets 408; a request still waiting for the model then gets 503 with Retry-After (the
model was busy with others); /v1/generate stops generating there and answers the words so far with
finish_reason "time_limit", a completion with finish_reason "length". SIGTERM (or Ctrl-C) stops listening, lets
the requests in flight (open streams too, each within its bound) finish, then exits. The listening socket is TCP
with TCP_NODELAY, so keep-alive clients do not wait for delayed ACKs.

Several runs: each is a model named after its directory, loaded once at start-up with its own lock; the
`model` field of /v1/completions picks one (an unknown name is a 404). The native routes and the page serve the
first run; /health describes the first and lists every name ("models").

The model is loaded once, before the server listens, in the precision chosen by `--precision` (else the one
saved in the run: lstmlm/precision.py); requests name no files. Keras/torch model calls are not thread-safe, so
every call holds one lock (guards.ModelGate; FastAPI runs the endpoints in a thread pool; a stream holds it one
word at a time). /v1/next requests that arrive within `--batch-window-ms` of each other run as one call in one
worker thread (micro_batching.py); in int8 their softmax-layer products run as one
(LanguageModel.predict_next_batch), in float32/bfloat16 each row alone (BLAS rounds by the number of rows):
every answer is bit-identical to `predict_next`'s, whichever requests shared its batch. `--no-micro-batching`
answers them one at a time under the lock. Prompts go through the model's prefix-state cache, so a text that
grows by a word costs a word.

FastAPI and uvicorn are the `serve` extra: they are imported inside functions so `lstmlm --help` stays fast
and works without them.
"""

import argparse
import dataclasses
import ipaddress
import os
import signal
import socket
import sys
from importlib import resources
from pathlib import Path

from lstmlm.errors import LstmlmError
from lstmlm.serving.guards import ApiKeys, BodyLimit, Busy, ModelGate, error_payload, is_openai_path

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
    max_choices: int = 16  # /v1/completions: prompts x n


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


# ---- the app --------------------------------------------------------------------------------------------
def model_name_of(run_dir):
    """A served run's model name: its directory's name, never its full path (which says where files are).

    Example:
        >>> model_name_of("runs/ptb-small/")
        'ptb-small'
    """
    return Path(run_dir).resolve().name


def check_model_names(run_dirs):
    """The runs' model names, in order; two runs with one name are a one-line error (a request could not tell
    them apart).

    Example:
        >>> check_model_names(["runs/tiny", "runs/other"])
        ['tiny', 'other']
    """
    seen = {}
    for run_dir in run_dirs:
        name = model_name_of(run_dir)
        if name in seen:
            # argument=None: the CLI would write "run_dirs" as a flag (--run-dirs), but it is the positional
            # argument, which argparse's own messages call run_dirs as well.
            raise LstmlmError(f"run_dirs: {seen[name]} and {run_dir} are both named {name!r} (a model is named "
                              f"after its directory): rename or copy one")
        seen[name] = run_dir
    return list(seen)


def create_app(language_model, limits=Limits(), batching=Batching(), api_keys=()):
    """The FastAPI app serving one loaded model, or several.

    Args:
        language_model: a `lstmlm.inference.language_model.LanguageModel` (from `load(run_dir)`), loaded once; or
            a list of them, each named after its run directory. The first is the default: the native routes
            (/v1/next, /v1/generate, /v1/score), the page and /health's details are its; /v1/completions and
            /v1/models serve every one by name.
        limits: the request bounds.
        batching: micro-batching of /v1/next.
        api_keys: keys of which one must come as `Authorization: Bearer KEY` on every /v1/* route (none: open).

    Example:
        >>> app = create_app(load("runs/tiny"), api_keys=["secret"])   # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)             # doctest: +SKIP
        >>> app = create_app([load("runs/tiny"), load("runs/other")])  # doctest: +SKIP
    """
    from fastapi import FastAPI

    from lstmlm import __version__
    from lstmlm.serving.micro_batching import MicroBatcher
    from lstmlm.serving.native_api import add_native_routes, next_batch_function
    from lstmlm.serving.openai_api import add_openai_routes

    models = list(language_model) if isinstance(language_model, (list, tuple)) else [language_model]
    names = check_model_names([model.run_directory.path for model in models])
    # One lock per model: each model's calls are serialized, but two models never wait for each other.
    gates = {name: ModelGate(model) for name, model in zip(names, models)}
    model_name, language_model = names[0], models[0]  # the default: the native routes, the page, /health
    gate = gates[model_name]
    # /v1/next is the only batched route and it serves the first model, so only that one has a micro-batcher.
    batcher = (MicroBatcher(next_batch_function(language_model), batching.window_ms / 1000, batching.max_batch,
                            gate=gate.lock) if batching.enabled else None)
    app = FastAPI(title="lstmlm", version=__version__,
                  description=f"Next-word suggestions, generation, scoring and OpenAI-compatible completions with "
                              f"the LSTM model{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}.")
    # The key check runs first (outermost): a request without the key is refused before its body is read.
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes, seconds=limits.max_request_seconds)
    app.add_middleware(ApiKeys, keys=list(api_keys))
    add_error_handlers(app, limits)
    health = health_of(language_model, model_name, limits, batching, bool(api_keys))
    add_page_and_health(app, {**health, "models": names})
    add_native_routes(app, gate, batcher, limits)
    add_openai_routes(app, gates, limits)
    app.state.batcher = batcher  # app.state.batcher.close() stops its worker thread (a daemon otherwise)
    app.state.limits = limits
    return app


def health_of(language_model, model_name, limits, batching, keys_required):
    """/health's answer: what is loaded and what a request may ask for."""
    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS

    config = language_model.config
    return {"status": "ok", "model": model_name, "vocabulary_size": len(language_model.vocabulary),
            "parameters": int(language_model.model.count_params()), "hidden_size": config.hidden_size,
            "num_layers": config.num_layers, "lowercase": config.lowercase, "default_num_words": DEFAULT_NUM_WORDS,
            "precision": language_model.precision, "micro_batching": dataclasses.asdict(batching),
            "limits": dataclasses.asdict(limits), "api_key_required": keys_required}


def add_page_and_health(app, health):
    """GET / (the page) and GET /health (open even when keys are required: the page reads it first)."""
    from fastapi.responses import HTMLResponse

    page = resources.files("lstmlm.serving").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def get_health():
        """The loaded model (the first run, which the native routes and the page serve): name (the run
        directory's), vocabulary size, parameters, hidden_size, num_layers, lowercase, default_num_words (what
        /v1/generate generates when not told), the request limits, whether /v1/* needs an API key, and every
        served model's name ("models", the first first)."""
        return health


def _validation_message(errors):
    """One line from pydantic's error list, e.g. "body.top_k: Input should be less than or equal to 100"."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid request')}{more}"


def _invalid_request(request, error):
    """A body that is not JSON is a 400; a bad field 422 on the native routes, 400 on the OpenAI ones."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse

    details = jsonable_encoder(error.errors(), custom_encoder={Exception: str})
    for detail in details:
        detail.pop("input", None)  # the client sent it; echoing up to 64 KiB back helps no one
        detail.pop("url", None)
    path = request.url.path
    if any(detail.get("type") == "json_invalid" for detail in details):  # not JSON at all: a bad request
        message = f"invalid JSON: {details[0].get('ctx', {}).get('error', 'JSON decode error')}"
        body = error_payload(path, 400, message)
        return JSONResponse(body if is_openai_path(path) else {**body, "details": details}, status_code=400)
    if is_openai_path(path):
        location = [str(part) for part in details[0].get("loc", ()) if part != "body"] if details else []
        return JSONResponse(error_payload(path, 400, _validation_message(details), ".".join(location) or None),
                            status_code=400)
    return JSONResponse({"error": _validation_message(details), "details": details}, status_code=422)


def add_error_handlers(app, limits):
    """Every error a client can cause is a 4xx with a JSON body in its route's shape (guards.error_payload),
    never a traceback; a bug is a 500 whose traceback goes to the log only."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from lstmlm.serving.openai_api import ApiError

    def answer(request, status, message, param=None, code=None, headers=None):
        return JSONResponse(error_payload(request.url.path, status, message, param, code), status_code=status,
                            headers=headers)

    busy_message = (f"the model was busy for this request's whole time bound ({limits.max_request_seconds:g} s); "
                    "retry later")
    handlers = {
        RequestValidationError: _invalid_request,
        ApiError: lambda request, error: answer(request, error.status, error.message, error.param, error.code),
        # a bad argument the library caught: 422 on the native routes (as ever), 400 in the contract
        LstmlmError: lambda request, error: answer(request, 400 if is_openai_path(request.url.path) else 422,
                                                   str(error)),
        # overloaded, not broken: the client may retry
        Busy: lambda request, error: answer(request, 503, busy_message, headers={"Retry-After": "1"}),
        HTTPException: lambda request, error: answer(request, error.status_code, str(error.detail),
                                                     headers=error.headers),  # 404, 405: JSON like the rest
        Exception: lambda request, error: answer(request, 500, "internal error"),
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


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
    """`lstmlm serve`'s flags (the CLI finds this module by name: serving imports nothing from cli.py)."""
    from lstmlm.precision import add_precision_argument

    parser = subparsers.add_parser("serve", help="next-word suggestions over HTTP and a web page",
                                   description="Serve run directories: JSON endpoints under /v1 (lstmlm's own and "
                                               "OpenAI-compatible completions) and a page at /.")
    parser.add_argument("run_dirs", nargs="+",
                        help="one or more run directories; each is the model named after its directory in "
                             "/v1/completions and /v1/models, the first also on /v1/next, /v1/generate, "
                             "/v1/score and the page")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    parser.add_argument("--api-key", action="append", default=None, metavar="KEY",
                        help=f"require `Authorization: Bearer KEY` on /v1/* (repeat for several keys; default: "
                             f"the comma-separated keys in ${API_KEY_VARIABLE}, else none)")
    parser.add_argument("--require-key", action="store_true",
                        help="refuse to start on an address beyond loopback without an API key")
    parser.add_argument("--max-request-bytes", type=int, default=Limits.max_request_bytes,
                        help=f"largest request body accepted (default {Limits.max_request_bytes})")
    parser.add_argument("--max-request-seconds", type=float, default=Limits.max_request_seconds,
                        help=f"each request's time bound, from its headers to its answer: a body not read by then "
                             f"gets 408, a model busy until then 503, /v1/generate stops there, a completion ends "
                             f"with finish_reason length (default {Limits.max_request_seconds:g})")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (info logs every request, never a key)")
    parser.add_argument("--micro-batching", default=True, action=argparse.BooleanOptionalAction,
                        help="run /v1/next requests that arrive together as one batch (default on)")
    parser.add_argument("--batch-window-ms", type=float, default=Batching.window_ms,
                        help=f"how long a batch waits for more requests (default {Batching.window_ms} ms)")
    parser.add_argument("--max-batch", type=int, default=Batching.max_batch,
                        help=f"most /v1/next requests in one batch (default {Batching.max_batch})")
    add_precision_argument(parser)
    parser.set_defaults(handler=run_serve)


API_KEY_VARIABLE = "LSTMLM_API_KEY"


def api_keys_of(flag_keys, environ=os.environ):
    """The keys from --api-key, else from $LSTMLM_API_KEY (comma-separated); blank ones are a mistake.

    Example:
        >>> api_keys_of(None, {"LSTMLM_API_KEY": "one, two"})
        ['one', 'two']
    """
    keys = flag_keys if flag_keys else [key.strip() for key in environ.get(API_KEY_VARIABLE, "").split(",")]
    if flag_keys and any(not key.strip() for key in flag_keys):
        raise LstmlmError("--api-key must not be empty")
    return [key.strip() for key in keys if key.strip()]


def is_loopback(host):
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_serve_arguments(args):
    if not 0 <= args.port <= 65535:
        raise LstmlmError(f"--port must be in 0..65535, got {args.port}")
    if args.max_request_bytes <= 0:
        raise LstmlmError(f"--max-request-bytes must be positive, got {args.max_request_bytes}")
    if not 0 < args.max_request_seconds <= 3600:
        raise LstmlmError(f"--max-request-seconds must be in (0, 3600], got {args.max_request_seconds}")
    if not 0 <= args.batch_window_ms <= 1000 or args.max_batch < 1:
        raise LstmlmError("--batch-window-ms must be in 0..1000 and --max-batch positive")


def run_serve(args):
    """Load the run directories (each once), listen, serve until Ctrl-C (after which the CLI exits with 130)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError:
        raise LstmlmError(INSTALL_HINT) from None
    _check_serve_arguments(args)
    keys = api_keys_of(args.api_key)
    if args.require_key and not keys and not is_loopback(args.host):
        raise LstmlmError(f"--require-key: {args.host} is reachable from other machines; give --api-key KEY "
                          f"(or set {API_KEY_VARIABLE})")
    check_model_names(args.run_dirs)  # before loading anything: a clash is found at once
    from lstmlm.inference.language_model import load

    batching = Batching(args.micro_batching, args.batch_window_ms, args.max_batch)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_request_seconds=args.max_request_seconds)
    models = [load(run_dir, args.precision) for run_dir in args.run_dirs]
    app = create_app(models, limits, batching, api_keys=keys)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"lstmlm: serving {', '.join(args.run_dirs)} at http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    if keys:  # how many, never which
        print(f"lstmlm: /v1/* requires an API key ({len(keys)} accepted)", file=sys.stderr, flush=True)
    elif not is_loopback(host):
        print(f"lstmlm: note: {host} is reachable from other machines and there is no authentication",
              file=sys.stderr, flush=True)
    serve_in_main_thread(make_server(app, args.log_level), sock)
    return 0
