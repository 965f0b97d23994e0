"""`lstmlm serve` speaks the OpenAI completions contract: tested with real clients, not with helpers of ours.

The official `openai` package (plain, n, stop, logprobs, echo, stream; its AuthenticationError, BadRequestError
and NotFoundError), `curl -N` for the raw event stream, and httpx for what the clients hide (the error body's
shape, a client that goes away mid-stream). The server is a real uvicorn on a free loopback port serving the
session's `tiny_run` with an API key.
"""

import json
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai", reason="the test extra (openai) is not installed")
httpx = pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from helpers import serving  # noqa: E402

from lstmlm.inference.language_model import join_words, load, word_piece  # noqa: E402
from lstmlm.serving.server import Batching, Limits, create_app  # noqa: E402

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def url(tiny_run):
    """A server of the tiny run that requires KEY (its own LanguageModel: see conftest's server_url)."""
    with serving(create_app(load(tiny_run), api_keys=[KEY, "another-key"])) as base:
        yield base


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def continuation(words, prompt):
    """The completion text of `words` after `prompt`: a space before the first word unless the prompt ends in one."""
    previous = None if prompt == "" or prompt[-1].isspace() else "prompt"
    return "".join(word_piece(word, before) for word, before in zip(words, [previous, *words]))


def test_word_pieces_concatenate_to_join_words():
    words = ["a", "<eos>", "<eos>", "b", "c", "<eos>", "d"]
    assert continuation(words, "") == join_words(words)
    assert continuation(words, "x") == " " + join_words(words)


# ---- the models ---------------------------------------------------------------------------------------
def test_models_lists_the_run_and_an_unknown_one_is_404(client, tiny_run):
    assert [model.id for model in client.models.list()] == [tiny_run.name]
    model = client.models.retrieve(tiny_run.name)
    assert model.owned_by == "lstmlm" and model.created > 1_600_000_000
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="the cat")


# ---- plain completions --------------------------------------------------------------------------------
def test_a_seeded_completion_is_generate_for_that_seed(client, loaded_tiny):
    answer = client.completions.create(model="tiny", prompt="the cat", max_tokens=8, temperature=1.0, seed=5)
    alone = loaded_tiny.generate("the cat", 8, temperature=1.0, seed=5)
    assert answer.object == "text_completion" and answer.model == "tiny" and answer.id.startswith("cmpl-")
    [choice] = answer.choices
    assert choice.text == continuation(alone["words"], "the cat") and choice.finish_reason == "length"
    assert choice.index == 0 and choice.logprobs is None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (2, 8, 10)


def test_max_tokens_defaults_to_16_as_the_contract_says(client):
    assert client.completions.create(model="tiny", prompt="a bird", temperature=0).usage.completion_tokens == 16


def test_n_choices_are_the_seeded_samples_and_prompt_lists_each_get_n(client, loaded_tiny):
    answer = client.completions.create(model="tiny", prompt="my friend", max_tokens=6, n=3, seed=40)
    samples = loaded_tiny.generate("my friend", 6, seed=40, num_samples=3)["samples"]
    assert [c.text for c in answer.choices] == [continuation(s["words"], "my friend") for s in samples]
    both = client.completions.create(model="tiny", prompt=["the dog", "a bird "], max_tokens=4, n=2, seed=1)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert both.choices[2].text[0] != " "  # the prompt ends in a space: the first word needs none
    assert both.usage.prompt_tokens == 4 and both.usage.completion_tokens == 16


def test_stop_strings_end_a_choice_before_them(client, loaded_tiny):
    words = loaded_tiny.generate("the cat", 12, temperature=0)["words"]
    full = continuation(words, "the cat")
    stop = word_piece(words[3], words[2])  # the fourth word's text (or an earlier equal one) ends the text
    answer = client.completions.create(model="tiny", prompt="the cat", max_tokens=12, temperature=0,
                                       stop=[stop, "never appears"])
    assert answer.choices[0].text == full[: full.index(stop)]
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens <= 4  # nothing was generated after the stop


def test_logprobs_are_the_models_log_probabilities(client, loaded_tiny):
    answer = client.completions.create(model="tiny", prompt="the cat sees", max_tokens=5, temperature=0, logprobs=3)
    logprobs = answer.choices[0].logprobs
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert len(logprobs.top_logprobs) == 5 and all(len(top) == 3 for top in logprobs.top_logprobs)
    for chosen, token, top in zip(logprobs.token_logprobs, logprobs.tokens, logprobs.top_logprobs):
        assert chosen == max(top.values()) and top[token] == chosen  # greedy: the chosen word is the most likely
    scored = loaded_tiny.score("the cat sees " + answer.choices[0].text.replace("\n", " <eos> "))
    expected = [entry["log_probability"] for entry in scored["word_scores"][3:]]
    assert logprobs.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(5)]


def test_echo_returns_the_prompt_then_the_completion(client):
    plain = client.completions.create(model="tiny", prompt="The dog", max_tokens=4, seed=9)
    echoed = client.completions.create(model="tiny", prompt="The dog", max_tokens=4, seed=9, echo=True, logprobs=1)
    assert echoed.choices[0].text == "The dog" + plain.choices[0].text
    logprobs = echoed.choices[0].logprobs
    assert logprobs.tokens[:2] == ["the", " dog"] and len(logprobs.tokens) == 6  # the words as the model read them
    assert logprobs.text_offset[:2] == [0, 4] and logprobs.token_logprobs[0] < 0


# ---- streams ------------------------------------------------------------------------------------------
def test_a_seeded_stream_concatenates_to_exactly_the_plain_text(client):
    request = dict(model="tiny", prompt="our neighbour", max_tokens=20, temperature=1.0, seed=123, n=2,
                   stop="the river", logprobs=2)
    plain = client.completions.create(**request)
    texts, finish, tokens = ["", ""], [None, None], [[], []]
    chunks = list(client.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] += choice.text
        finish[choice.index] = choice.finish_reason or finish[choice.index]
        tokens[choice.index] += choice.logprobs.tokens if choice.logprobs else []
    assert texts == [c.text for c in plain.choices] and finish == [c.finish_reason for c in plain.choices]
    assert tokens == [c.logprobs.tokens for c in plain.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage  # the usage chunk, when asked, is last
    assert len(chunks) > 20  # one event per generated word (and per choice), not one at the end


def test_curl_sees_the_raw_event_stream(url):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"model": "tiny", "prompt": "the cat", "max_tokens": 5, "temperature": 0, "stream": True})
    result = subprocess.run([curl, "-sN", f"{url}/v1/completions", "-H", f"Authorization: Bearer {KEY}",
                             "-H", "Content-Type: application/json", "-d", body, "-D", "-"],
                            capture_output=True, text=True, timeout=60, check=True)
    head, _, stream = result.stdout.replace("\r\n", "\n").partition("\n\n")
    assert "content-type: text/event-stream" in head.lower()
    events = stream.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]  # each event ends with a blank line; [DONE] closes the stream
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2]) and len(chunks) == 6  # 5 words, 1 finish
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 5 + ["length"]


class CountingSlowModel:
    """The tiny run's model with every word slowed to `seconds` and counted (what the server computes)."""

    def __init__(self, tiny_run, seconds=0.05):
        self.language_model, self.words = load(tiny_run), 0
        fast = self.language_model._next_logits

        def slow(states):
            time.sleep(seconds)
            self.words += 1
            return fast(states)

        self.language_model._next_logits = slow


def test_a_client_that_goes_away_mid_stream_stops_the_generation(tiny_run):
    model = CountingSlowModel(tiny_run)
    body = {"model": "tiny", "prompt": "the cat", "max_tokens": 400, "stream": True}
    with serving(create_app(model.language_model, Limits(max_request_seconds=60), Batching(False))) as base:
        with httpx.Client(timeout=30) as http, http.stream("POST", base + "/v1/completions", json=body) as events:
            lines = events.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert next(line for line in lines if line.startswith("data: "))
        # the connection is closed now; at most the word in progress is finished
        time.sleep(0.5)
        after_close = model.words
        time.sleep(1.0)
        assert model.words == after_close < 20  # not 400 words: no compute after the client left
        assert httpx.get(base + "/health").status_code == 200


def test_the_time_bound_ends_a_completion_with_length(tiny_run, loaded_tiny):
    model = CountingSlowModel(tiny_run)
    request = {"model": "tiny", "prompt": "the cat", "max_tokens": 100, "seed": 11}
    with serving(create_app(model.language_model, Limits(max_request_seconds=0.6), Batching(False))) as base:
        plain = httpx.post(base + "/v1/completions", json=request, timeout=30).json()
        streamed = httpx.post(base + "/v1/completions", json={**request, "stream": True}, timeout=30).text
    alone = continuation(loaded_tiny.generate("the cat", 100, seed=11)["words"], "the cat")
    assert plain["choices"][0]["finish_reason"] == "length" and plain["usage"]["completion_tokens"] < 100
    assert alone.startswith(plain["choices"][0]["text"])
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) < 100
    assert alone.startswith("".join(chunk["choices"][0]["text"] for chunk in chunks))


# ---- errors and keys ----------------------------------------------------------------------------------
def test_a_wrong_key_is_the_clients_authentication_error(url):
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        wrong.completions.create(model="tiny", prompt="the cat")
    assert raised.value.status_code == 401 and raised.value.body["code"] == "invalid_api_key"
    assert openai.OpenAI(base_url=url + "/v1", api_key="another-key").models.list().data  # either key works


@pytest.mark.parametrize("fields, param", [({"max_tokens": 100_000}, "max_tokens"), ({"suffix": "end"}, "suffix"),
                                           ({"best_of": 3}, "best_of"), ({"logprobs": 6}, "logprobs"),
                                           ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
                                           ({"logit_bias": {"50256": -100}}, "logit_bias"),
                                           ({"extra_body": {"top_kk": 3}}, "top_kk"), ({"n": 17}, "n")])
def test_a_bad_field_is_the_clients_bad_request_error(client, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="tiny", prompt="the cat", **fields)
    assert raised.value.status_code == 400 and raised.value.body["param"] == param


def test_errors_have_the_contracts_shape_and_the_old_routes_keep_theirs(url):
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = httpx.post(url + "/v1/completions", json={"model": "tiny", "temperature": -1}, headers=headers)
    assert answer.status_code == 400
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert answer.json()["error"]["type"] == "invalid_request_error"
    too_big = httpx.post(url + "/v1/completions", content=b"x" * 70_000, headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["message"].startswith("request body over")
    old = httpx.post(url + "/v1/next", json={"text": "the", "top_k": 0}, headers=headers)
    assert old.status_code == 422 and isinstance(old.json()["error"], str) and old.json()["details"]
    unauthorized = httpx.post(url + "/v1/next", json={"text": "the"})
    assert unauthorized.status_code == 401 and isinstance(unauthorized.json()["error"], str)
    assert httpx.get(url + "/health").json()["api_key_required"] is True  # /health stays open


def test_keys_are_compared_in_constant_time(url, monkeypatch):
    import hmac

    from lstmlm.serving import guards

    calls, compare = [], hmac.compare_digest
    monkeypatch.setattr(guards.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or compare(a, b))
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sk-nope"}).status_code == 401
    assert len(calls) == 2  # against every key, so the time does not say which one nearly matched


@pytest.mark.slow
def test_the_cli_takes_keys_and_never_logs_them(tiny_run):
    process = subprocess.Popen([sys.executable, "-m", "lstmlm", "serve", str(tiny_run), "--port", "0",
                                "--api-key", KEY, "--log-level", "debug"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # uvicorn's access log goes to stdout
    try:
        port = int(re.search(r":(\d+)/", process.stdout.readline())[1])
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        good = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model="tiny", prompt="the", max_tokens=2).choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-guess", max_retries=0).models.list()
    finally:
        process.send_signal(2)
        process.wait(timeout=30)
    log = process.stdout.read()
    process.stdout.close()
    assert "requires an API key (1 accepted)" in log and "POST /v1/completions" in log
    assert KEY not in log and "sk-guess" not in log


def test_require_key_refuses_to_listen_beyond_loopback_without_a_key(tiny_run, capsys, monkeypatch):
    from lstmlm.cli import main

    monkeypatch.delenv("LSTMLM_API_KEY", raising=False)
    assert main(["serve", str(tiny_run), "--host", "0.0.0.0", "--require-key"]) == 2
    assert "--require-key: 0.0.0.0 is reachable from other machines" in capsys.readouterr().err


def test_the_concurrent_streams_each_get_their_seeded_text(url, loaded_tiny):
    """Streams hold the model one word at a time, so they interleave; each still gets its own seed's text."""
    texts = {}

    def stream(seed):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        chunks = client.completions.create(model="tiny", prompt="a bird", max_tokens=10, seed=seed, stream=True)
        texts[seed] = "".join(chunk.choices[0].text for chunk in chunks)

    threads = [threading.Thread(target=stream, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert texts == {seed: continuation(loaded_tiny.generate("a bird", 10, seed=seed)["words"], "a bird")
                     for seed in range(6)}
