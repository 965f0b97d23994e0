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
from lstmlm.server import Limits, create_app, listen  # noqa: E402

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
    from lstmlm.language_model import DEFAULT_NUM_WORDS

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
    from lstmlm.language_model import load

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


@pytest.mark.slow
def test_cli_serves_until_ctrl_c(tiny_run):  # serves the shared run read-only
    """`lstmlm serve RUN --port 0` in a subprocess: prints its URL, answers, stops on Ctrl-C with status 130
    (the CLI's Ctrl-C status) after uvicorn's graceful shutdown."""
    process = subprocess.Popen([sys.executable, "-m", "lstmlm", "serve", str(tiny_run), "--port", "0",
                                "--log-level", "warning"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stderr.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert url, line
        for _ in range(100):  # the socket listens before uvicorn has started; wait for an answer
            try:
                health = httpx.get(url[1] + "health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.json()["model"] == tiny_run.name
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        assert process.stderr.read().strip().endswith("lstmlm: interrupted")
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
