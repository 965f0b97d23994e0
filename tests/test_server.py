"""`lstmlm serve`: the JSON API through a real uvicorn server on a free loopback port.

The numbers the server returns must be the library's numbers (`LanguageModel.predict_next`, `generate`,
`score`); every bad request must be a 4xx with a JSON body, never a 500. The server (conftest's `server_url`)
serves the session's `tiny_run`, trained on the toy grammar of tests/helpers.py.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from helpers import serving  # noqa: E402

from lstmlm.errors import LstmlmError  # noqa: E402
from lstmlm.serving.server import Limits, create_app, listen  # noqa: E402

SENTENCES = ["the cat sees the ball", "my friend likes a fish today", "a bird hears the river",
             "our neighbour wants some bread"]  # the toy grammar's


@pytest.fixture(scope="session")
def language_model(loaded_tiny):
    """The library's answers to compare with (the server holds its own copy of the same run)."""
    return loaded_tiny


@pytest.fixture
def client(server_url):
    with httpx.Client(base_url=server_url, timeout=30) as client:
        yield client


# ---- the endpoints --------------------------------------------------------------------------------------
def test_health_describes_the_loaded_model(client, language_model, tiny_run):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == tiny_run.name == "tiny"  # the run directory's name, not its full path
    assert health["vocabulary_size"] == len(language_model.vocabulary)
    assert health["parameters"] == language_model.model.count_params()
    assert health["limits"] == Limits().__dict__
    assert health["default_num_words"] == 30


def test_openapi_schema_lists_the_versioned_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/next", "/v1/generate", "/v1/score", "/health"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["NextRequest"]["properties"]["top_k"]["maximum"] == 100


def test_next_matches_the_library_sorted_and_at_most_one(client, language_model):
    answer = client.post("/v1/next", json={"text": "the cat sees", "top_k": 5})
    assert answer.status_code == 200
    assert answer.json() == language_model.predict_next("the cat sees", top_k=5)  # the library's dict, as it is
    words = answer.json()["predictions"]
    expected = language_model.predict_next("the cat sees", top_k=5)["predictions"]
    assert [w["word"] for w in words] == [w["word"] for w in expected]
    assert [w["probability"] for w in words] == pytest.approx([w["probability"] for w in expected], abs=1e-12)
    probabilities = [w["probability"] for w in words]
    assert len(words) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1


def test_next_over_the_whole_vocabulary_sums_to_one(client, language_model):
    size = len(language_model.vocabulary)
    words = client.post("/v1/next", json={"text": "a bird", "top_k": 100}).json()["predictions"]
    assert len(words) == min(size, 100)
    assert sum(w["probability"] for w in words) == pytest.approx(1.0, abs=1e-6)


def test_next_reports_unknown_words(client):
    answer = client.post("/v1/next", json={"text": "the zebra"}).json()
    assert answer["unknown_words"] == ["zebra"] and len(answer["predictions"]) == 5


def test_generate_same_seed_same_text(client, language_model):
    request = {"prompt": "the dog", "num_words": 12, "temperature": 1.0, "top_k": 5, "seed": 7}
    first, second = (client.post("/v1/generate", json=request).json() for _ in range(2))
    assert first["text"] == second["text"] and len(first["words"]) == 12
    library = language_model.generate("the dog", num_words=12, temperature=1.0, top_k=5, seed=7)
    assert first == library  # the library's dict, as it is


def test_generate_greedy_needs_no_seed(client, language_model):
    answer = client.post("/v1/generate", json={"prompt": "a bird", "num_words": 6, "temperature": 0}).json()
    assert answer["words"] == language_model.generate("a bird", num_words=6, temperature=0)["words"]


def test_generate_defaults_to_default_num_words(client):
    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS

    assert len(client.post("/v1/generate", json={"temperature": 0}).json()["words"]) == DEFAULT_NUM_WORDS


def test_score_total_is_the_sum_and_perplexity_follows(client, language_model):
    answer = client.post("/v1/score", json={"text": "the cat sees the ball"}).json()
    values = [w["log_probability"] for w in answer["word_scores"]]
    assert [w["word"] for w in answer["word_scores"]] == "the cat sees the ball".split()
    assert all(v < 0 for v in values)
    assert answer["tokens"] == 5
    assert answer["total_log_probability"] == pytest.approx(sum(values), abs=1e-9)
    assert answer["perplexity"] == pytest.approx(math.exp(-answer["total_log_probability"] / 5), rel=1e-9)
    library = language_model.score("the cat sees the ball")
    assert answer["total_log_probability"] == pytest.approx(library["total_log_probability"], abs=1e-9)
    assert list(answer) == list(library) == ["word_scores", "total_log_probability", "tokens", "perplexity",
                                              "unknown_words"]


class OverlapCounter:
    """A LanguageModel stand-in that counts how many of its model calls run at the same time.

    Each call holds the model for a few milliseconds more than it needs (a sleep releases the GIL), so that
    without the server's lock concurrent requests would be inside the model together.
    """

    def __init__(self, language_model, hold_seconds=0.005):
        self.language_model, self.hold_seconds = language_model, hold_seconds
        self.inside = self.most_inside = self.calls = 0
        self.counting = threading.Lock()

    def __getattr__(self, name):  # run, vocabulary, model, config: what create_app reads
        return getattr(self.language_model, name)

    def _counted(self, method, *args, **kwargs):
        with self.counting:
            self.inside += 1
            self.calls += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            time.sleep(self.hold_seconds)
            return getattr(self.language_model, method)(*args, **kwargs)
        finally:
            with self.counting:
                self.inside -= 1

    def predict_next(self, *args, **kwargs):
        return self._counted("predict_next", *args, **kwargs)

    def generate(self, *args, **kwargs):
        return self._counted("generate", *args, **kwargs)

    def score(self, *args, **kwargs):
        return self._counted("score", *args, **kwargs)


def test_concurrent_requests_are_serialized_and_get_the_answers_given_alone(tiny_run):
    """The server holds one lock around every model call: 8 clients at once never have two calls inside the
    model together, and every answer equals the same request's answer when it was alone. (Without the lock
    this fails: several calls run at once.)"""
    from lstmlm.inference.language_model import load

    model = OverlapCounter(load(tiny_run))
    requests = []
    for i in range(24):
        words = SENTENCES[i % 4].split()[: 1 + i % 5]
        kind = i % 3
        if kind == 0:
            requests.append(("/v1/next", {"text": " ".join(words), "top_k": 3}))
        elif kind == 1:
            requests.append(("/v1/generate", {"prompt": " ".join(words), "num_words": 4, "seed": i, "top_k": 5}))
        else:
            requests.append(("/v1/score", {"text": " ".join(words)}))
    with serving(create_app(model)) as url, httpx.Client(base_url=url, timeout=60) as client:
        alone = [client.post(path, json=body).json() for path, body in requests]  # one at a time
        assert model.most_inside == 1

        per_thread, opened = threading.local(), []  # one client (connection) per thread

        def ask(request):
            if not hasattr(per_thread, "client"):
                per_thread.client = httpx.Client(base_url=url, timeout=60)
                opened.append(per_thread.client)
            return per_thread.client.post(request[0], json=request[1]).json()

        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, requests))
        for own_client in opened:
            own_client.close()
    assert model.calls == 2 * len(requests)
    assert model.most_inside == 1, f"{model.most_inside} model calls ran at the same time"
    assert together == alone  # exactly, every float


def test_the_page_is_served_and_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="suggestions"' in page.text and 'id="continue"' in page.text and 'id="score"' in page.text
    # offline: no scripts, styles, fonts or images from anywhere but this server
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert "@import" not in page.text and "url(" not in page.text


# ---- limits and errors ----------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("/v1/next", {"text": "the", "top_k": 0}, 422, "top_k"),
    ("/v1/next", {"text": "the", "top_k": 101}, 422, "top_k"),
    ("/v1/next", {"text": "the", "top_k": "many"}, 422, "top_k"),
    ("/v1/next", {"top_k": 3}, 422, "text"),
    ("/v1/next", {"text": 5}, 422, "text"),
    ("/v1/next", {"text": "the", "topk": 3}, 422, "topk"),  # a misspelt field is not ignored
    ("/v1/next", {"text": "x" * 10_001}, 422, "text"),
    ("/v1/next", {"text": "a " * 1_001}, 422, "1001 words"),
    ("/v1/generate", {"num_words": 501}, 422, "num_words"),
    ("/v1/generate", {"num_words": -1}, 422, "num_words"),
    ("/v1/generate", {"words": 5}, 422, "words"),  # the old name is an unknown field, not silently ignored
    ("/v1/generate", {"temperature": -0.5}, 422, "temperature"),
    ("/v1/generate", {"temperature": 11}, 422, "temperature"),
    ("/v1/generate", {"top_p": 0}, 422, "top_p"),
    ("/v1/generate", {"top_p": 1.5}, 422, "top_p"),
    ("/v1/generate", {"seed": -1}, 422, "seed"),
    ("/v1/score", {"text": ""}, 422, "text"),
    ("/v1/score", {"text": "   "}, 422, "no words"),
    ("/v1/score", [1, 2], 422, "body"),
]


@pytest.mark.parametrize("path, body, status, mentioned", BAD_REQUESTS)
def test_bad_values_are_4xx_json(client, path, body, status, mentioned):
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert mentioned in answer.json()["error"]
    assert "Traceback" not in answer.text


@pytest.mark.parametrize("content", [b'{"text": "the",', b"text=the", b"\xff\xfe", b'{"temperature": NaN}'])
def test_invalid_json_is_4xx_json(client, content):
    answer = client.post("/v1/generate", content=content, headers={"Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["error"]


def test_oversize_body_is_413_with_or_without_content_length(client):
    body = json.dumps({"text": "the " * 20_000}).encode()  # 80 kB > the 64 KiB limit
    assert client.post("/v1/score", content=body).status_code == 413
    chunked = client.post("/v1/score", content=iter([body[:40_000], body[40_000:]]))  # no Content-Length
    assert chunked.status_code == 413 and "bytes" in chunked.json()["error"]
    assert client.get("/health").status_code == 200  # and the server is still fine


def test_unknown_paths_and_methods_are_json(client):
    assert client.get("/v2/next").json() == {"error": "Not Found"}
    answer = client.get("/v1/next")
    assert answer.status_code == 405 and answer.json()["error"]


# ---- the CLI verb ---------------------------------------------------------------------------------------
def test_cli_missing_run_directory_is_one_line(tmp_path, capsys):
    from lstmlm.cli import main

    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"lstmlm: error: {tmp_path / 'nowhere'}: no such run directory"


def test_cli_without_the_serve_extra_says_what_to_install(tmp_path, capsys, monkeypatch):
    from lstmlm.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now raises ModuleNotFoundError
    assert main(["serve", str(tmp_path)]) == 2
    assert "pip install 'lstmlm[serve]'" in capsys.readouterr().err


def test_busy_port_is_one_clear_error():
    first = listen("127.0.0.1", 0)
    try:
        with pytest.raises(LstmlmError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            listen("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def start_cli_server(run_dir):
    """`lstmlm serve RUN_DIR --port 0` in a subprocess; returns (process, port, /health's JSON) once it answers."""
    process = subprocess.Popen([sys.executable, "-m", "lstmlm", "serve", str(run_dir), "--port", "0",
                                "--log-level", "warning"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = process.stderr.readline()
    found = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
    assert found, line
    port = int(found[1])
    for _ in range(300):  # the socket listens before uvicorn has started; wait for an answer
        try:
            return process, port, httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("lstmlm serve did not answer /health within 30 s")


@pytest.mark.slow
def test_cli_serves_until_ctrl_c(tiny_run):  # serves the shared run read-only
    """`lstmlm serve RUN --port 0` in a subprocess: prints its URL, answers, stops on Ctrl-C with status 130
    (the CLI's Ctrl-C status) after uvicorn's graceful shutdown."""
    process, _, health = start_cli_server(tiny_run)
    try:
        assert health["model"] == tiny_run.name
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert process.stderr.read().strip().endswith("lstmlm: interrupted")
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


# ---- time bounds, Nagle, draining, isolation (issue 8) ---------------------------------------------------
def test_accepted_connections_have_tcp_nodelay():
    """The listening socket is TCP (proto IPPROTO_TCP, so asyncio sets TCP_NODELAY on each connection) and has
    TCP_NODELAY itself, which accepted sockets inherit: no 40 ms Nagle / delayed-ACK stall on keep-alive."""
    import socket

    server = listen("127.0.0.1", 0)
    try:
        assert server.proto == socket.IPPROTO_TCP
        with socket.create_connection(server.getsockname()):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        server.close()


class SlowScore:
    """A LanguageModel stand-in whose score holds the model for `seconds` (a long call that ignores deadlines)."""

    def __init__(self, language_model, seconds):
        self.language_model, self.seconds = language_model, seconds

    def __getattr__(self, name):
        return getattr(self.language_model, name)

    def score(self, text):
        time.sleep(self.seconds)
        return self.language_model.score(text)


@pytest.mark.parametrize("micro_batching", [True, False])
def test_a_request_still_waiting_for_a_busy_model_at_its_time_bound_gets_503(loaded_tiny, micro_batching):
    from lstmlm.serving.server import Batching

    app = create_app(SlowScore(loaded_tiny, 2.0), Limits(max_request_seconds=0.5), Batching(micro_batching))
    with serving(app) as url, ThreadPoolExecutor(2) as pool:
        long_call = pool.submit(httpx.post, url + "/v1/score", json={"text": "the cat"}, timeout=30)
        time.sleep(0.3)  # the score holds the model now
        started = time.monotonic()
        waiting = [httpx.post(url + path, json=body, timeout=30) for path, body in
                   (("/v1/next", {"text": "the cat"}), ("/v1/generate", {"prompt": "the", "num_words": 3}))]
        waited = time.monotonic() - started
        assert long_call.result().status_code == 200  # bound or not, a call that holds the model finishes
    for answer in waiting:
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "busy" in answer.json()["error"] and "0.5 s" in answer.json()["error"]
    assert waited < 1.9  # each gave up at its own bound, not when the long call ended
    if micro_batching:
        assert app.state.batcher.batch_sizes == []  # the withdrawn /v1/next never ran
        app.state.batcher.close()


def test_generate_stops_at_the_request_time_bound_with_the_words_so_far(tiny_run, loaded_tiny):
    """/v1/generate cannot hold the model past its bound: with each word slowed to 50 ms and a 0.6 s bound, 100
    words come back as the first few words of the same seeded text, finish_reason "time_limit"."""
    from lstmlm.inference.language_model import load
    from lstmlm.serving.server import Batching

    slow = load(tiny_run)
    fast_logits = slow._next_logits
    slow._next_logits = lambda states: (time.sleep(0.05), fast_logits(states))[1]
    body = {"prompt": "the cat", "num_words": 100, "temperature": 1.0, "seed": 11}
    with serving(create_app(slow, Limits(max_request_seconds=0.6), Batching(False))) as url:
        started = time.monotonic()
        answer = httpx.post(url + "/v1/generate", json=body, timeout=30)
        took = time.monotonic() - started
        free = httpx.post(url + "/v1/score", json={"text": "the cat"}, timeout=30)  # the model is free again
    assert answer.status_code == 200 and free.status_code == 200
    result = answer.json()
    alone = loaded_tiny.generate("the cat", 100, temperature=1.0, seed=11)
    assert result["finish_reason"] == "time_limit" and 1 <= len(result["words"]) < 100
    assert result["words"] == alone["words"][: len(result["words"])]
    assert took < 3  # 0.6 s bound + one slowed word + HTTP; 100 words would take over 5 s


def test_a_body_slower_than_the_time_bound_is_408_and_a_slow_timely_body_is_answered(tiny_run):
    """A client that sends its body a byte at a time holds a connection until the bound, never the model."""
    import socket

    from lstmlm.inference.language_model import load

    body = json.dumps({"text": "the cat", "top_k": 2}).encode()
    head = (f"POST /v1/next HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    def send_slowly(url, pause):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(head)
            try:
                for byte in body:
                    conn.sendall(bytes([byte]))
                    time.sleep(pause)
            except OSError:  # the server answered 408 and closed: fine, read its answer
                pass
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        return status, json.loads(answer.split(b"\r\n\r\n", 1)[1])

    with serving(create_app(load(tiny_run), Limits(max_request_seconds=1.0))) as url:
        status, answer = send_slowly(url, pause=0.2)  # ~30 bytes x 0.2 s = 6 s > 1 s
        assert status == 408 and "did not arrive within 1 s" in answer["error"]
        status, answer = send_slowly(url, pause=0.005)  # ~0.15 s: in time
        assert status == 200 and len(answer["predictions"]) == 2


def test_concurrent_seeded_generations_get_exactly_the_text_each_gets_alone(server_url, loaded_tiny):
    """Isolation: 16 clients released together, each sampling (temperature 1, every word allowed) with its own
    seed, get exactly the library's text for that seed alone: no shared LSTM state, no shared generator."""
    requests = [{"prompt": SENTENCES[i % 4].split()[0], "num_words": 15, "temperature": 1.0, "seed": 1000 + i}
                for i in range(16)]
    alone = [loaded_tiny.generate(r["prompt"], 15, temperature=1.0, seed=r["seed"]) for r in requests]
    barrier = threading.Barrier(len(requests))

    def ask(body):
        with httpx.Client(base_url=server_url, timeout=60) as client:
            client.get("/health")  # connect first, so the barrier releases requests, not handshakes
            barrier.wait()
            return client.post("/v1/generate", json=body).json()

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(ask, requests))
    assert together == alone
    assert len({" ".join(r["words"]) for r in together}) > 8  # the seeds do give different texts


@pytest.mark.slow
def test_sigterm_drains_the_request_in_flight_then_exits(tiny_run):
    """`lstmlm serve` gets SIGTERM while a request is in flight (its body half sent): it stops accepting new
    connections, still answers that request in full, then exits with the SIGTERM status (143 in a shell)."""
    import socket

    process, port, _ = start_cli_server(tiny_run)
    try:
        body = json.dumps({"text": "the cat sees the", "top_k": 3}).encode()
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        conn.sendall(f"POST /v1/next HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer listening
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert process.poll() is None  # still draining the request in flight
        conn.sendall(body[10:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        conn.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert len(json.loads(answer.split(b"\r\n\r\n", 1)[1])["predictions"]) == 3
        assert process.wait(timeout=30) == -signal.SIGTERM
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
