"""`lstmlm serve RUN [RUN ...]`: one server, several run directories; the OpenAI `model` field picks one.

The server serves the session's `tiny_run` (first) and `other`, a run trained here on a different corpus (other
words, another seed), so the two models' answers to one prompt differ. Checked with the official `openai` client:
/v1/models lists both, a completion of `other` is what `other` alone gives, an unknown name is NotFoundError.
The native routes and /health's details stay the first run's; two runs with one name are a one-line CLI error.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

openai = pytest.importorskip("openai", reason="the test extra (openai) is not installed")
httpx = pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from helpers import serving, tiny_config, zipf_text  # noqa: E402

from lstmlm.errors import LstmlmError  # noqa: E402
from lstmlm.inference.language_model import load, word_piece  # noqa: E402
from lstmlm.serving.server import create_app  # noqa: E402

KEY = "sk-several-0123456789"


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """A second tiny run, named "other": trained on a Zipf corpus of words w0..w29 (none of the toy grammar's)
    with another seed, so its continuations cannot be the tiny run's."""
    from lstmlm.training.loop import train

    corpus = tmp_path_factory.mktemp("other-corpus")
    # One text cut into the splits: each zipf_text seed has its own word-to-word structure, which all splits share.
    lines = zipf_text(30, 3800, structure=0.8, seed=11).splitlines(keepends=True)  # 20 words a line
    paths = {}
    for split, part in (("train", lines[:150]), ("valid", lines[150:170]), ("test", lines[170:])):
        paths[split] = corpus / f"zipf.{split}.txt"
        paths[split].write_text("".join(part), encoding="utf-8")
    out = tmp_path_factory.mktemp("other-runs") / "other"
    train(tiny_config(paths, epochs=2, seed=7), out=out, log=lambda line: None,
          command=["lstmlm", "train", "--preset", "tiny"], progress=False)
    return out


@pytest.fixture(scope="module")
def url(tiny_run, other_run):
    """One server of both runs (each loaded once, its own copy: see conftest's server_url), with an API key."""
    with serving(create_app([load(tiny_run), load(other_run)], api_keys=[KEY])) as base:
        yield base


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def continuation(words, prompt):
    """The completion text of `words` after `prompt` (a space before the first word: the prompt ends in none)."""
    return "".join(word_piece(word, before) for word, before in zip(words, ["prompt", *words]))


def test_models_lists_every_run_and_answers_each(client, tiny_run, other_run):
    assert [model.id for model in client.models.list()] == ["tiny", "other"]  # in the command line's order
    for run in (tiny_run, other_run):
        model = client.models.retrieve(run.name)
        assert model.id == run.name and model.owned_by == "lstmlm" and model.created > 1_600_000_000
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_the_model_field_picks_the_run(client, other_run, loaded_tiny):
    alone = load(other_run).generate("the cat", 5, temperature=0, seed=3)["words"]
    answer = client.completions.create(model="other", prompt="the cat", max_tokens=5, temperature=0, seed=3)
    assert answer.model == "other"
    assert answer.choices[0].text == continuation(alone, "the cat")
    first = client.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0, seed=3)
    assert first.model == "tiny"
    assert first.choices[0].text == continuation(loaded_tiny.generate("the cat", 5, temperature=0, seed=3)["words"],
                                                    "the cat")
    assert first.choices[0].text != answer.choices[0].text


def test_a_seeded_stream_of_the_second_model_is_its_plain_text(client):
    request = dict(model="other", prompt="w1 w2", max_tokens=6, temperature=1.0, seed=21)
    plain = client.completions.create(**request).choices[0].text
    assert "".join(chunk.choices[0].text for chunk in client.completions.create(**request, stream=True)) == plain


def test_an_unknown_or_missing_model_is_an_error(client, url):
    with pytest.raises(openai.NotFoundError, match="does not exist; this server serves 'tiny', 'other'"):
        client.completions.create(model="gpt-4", prompt="the cat", max_tokens=5)
    answer = httpx.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "model_not_found" and answer.json()["error"]["param"] == "model"
    missing = httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"  # never the first run silently


def test_the_key_guards_every_model(url):
    keyless = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        keyless.completions.create(model="other", prompt="the cat", max_tokens=1)


def test_the_native_routes_and_health_serve_the_first_run(url, loaded_tiny):
    health = httpx.get(url + "/health").json()
    assert health["model"] == "tiny" and health["models"] == ["tiny", "other"]
    assert health["vocabulary_size"] == len(loaded_tiny.vocabulary)
    answer = httpx.post(url + "/v1/next", json={"text": "the cat", "top_k": 3},
                        headers={"Authorization": f"Bearer {KEY}"}).json()
    assert answer == loaded_tiny.predict_next("the cat", 3)


# ---- duplicate names ------------------------------------------------------------------------------------
def test_two_runs_with_one_name_are_a_one_line_cli_error(tiny_run, tmp_path, capsys):
    from lstmlm.cli import main

    copy = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(tiny_run, copy)
    assert main(["serve", str(tiny_run), str(copy), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.strip() == (f"lstmlm: error: run_dirs: {tiny_run} and {copy} are both named 'tiny' (a model is "
                             f"named after its directory): rename or copy one")


def test_create_app_refuses_two_models_with_one_name(loaded_tiny):
    with pytest.raises(LstmlmError, match="run_dirs: .* are both named 'tiny'"):
        create_app([loaded_tiny, loaded_tiny])


@pytest.mark.slow
def test_the_cli_serves_several_runs(tiny_run, other_run):
    """`lstmlm serve RUN RUN --port 0` in a subprocess: both runs are models; Ctrl-C stops it (130)."""
    process = subprocess.Popen([sys.executable, "-m", "lstmlm", "serve", str(tiny_run), str(other_run), "--port",
                                "0", "--log-level", "warning"], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stderr.readline()
        found = re.search(r"serving .* at http://127\.0\.0\.1:(\d+)/", line)
        assert found, line
        base = f"http://127.0.0.1:{found[1]}"
        for _ in range(300):  # the socket listens before uvicorn has started; wait for an answer
            try:
                models = httpx.get(base + "/v1/models", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("lstmlm serve did not answer /v1/models within 30 s")
        assert [model["id"] for model in models["data"]] == ["tiny", "other"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
