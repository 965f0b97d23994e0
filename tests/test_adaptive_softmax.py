"""Adaptive softmax: exact normalised probabilities, the cheap training path equal to the exact one (values,
top-1 hits and gradients), serialisation, resume, and every verb on an adaptive run."""

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import tiny_config, tree_digest
from keras import ops

from lstmlm import run_directory as rd
from lstmlm.training import epoch as epoch_module
from lstmlm.model.adaptive_softmax import AdaptiveInput, AdaptiveSoftmax, parse_cutoffs, resolve_cutoffs
from lstmlm.data.batches import num_stream_batches
from lstmlm.cli import main
from lstmlm.config import Config
from lstmlm.errors import LstmlmError
from lstmlm.model.lstm_language_model import LSTMLanguageModel, build_model
from lstmlm.training.epoch import HISTORY_FIELDS
from lstmlm.training.loop import train
from lstmlm.training.trainer import Trainer, train_step

torch = pytest.importorskip("torch")

VOCAB, CUTOFFS = 40, [6, 17]
TIMING = {"tokens_per_second", "epoch_seconds", "wall_seconds"}


def make(tie=False, seed=3, **overrides):
    values = dict(vocabulary_size=VOCAB, embedding_size=12, hidden_size=12, num_layers=2, init_scale=0.6,
                  seed=seed, softmax="adaptive", cutoffs=CUTOFFS, tie_weights=tie)
    values.update(overrides)
    model = LSTMLanguageModel(**values)
    model.build((None, None))
    return model


def ids(batch, time, seed):
    return ops.convert_to_tensor(np.random.default_rng(seed).integers(0, VOCAB, (batch, time)), dtype="int32")


def numpy(tensor):
    return ops.convert_to_numpy(ops.stop_gradient(tensor)).astype(np.float64)


def softmax_rows(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


# ---- exact probabilities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True])
def test_probabilities_sum_to_one_over_the_vocabulary(tie):
    model = make(tie)
    with torch.no_grad():
        log_probs, _ = model.call_with_states(ids(4, 9, 0))
    assert tuple(log_probs.shape) == (4, 9, VOCAB)
    probabilities = np.exp(numpy(log_probs))
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)  # every position
    assert probabilities.min() > 0 and probabilities.std() > 1e-3  # a real, non-uniform distribution


@pytest.mark.parametrize("tie", [False, True])
def test_log_probabilities_follow_the_definition(tie):
    """p(shortlist word) = head softmax; p(word in cluster i) = p(cluster i) * softmax_i(projected h), in numpy."""
    model = make(tie)
    layer = model.adaptive_softmax
    h = np.random.default_rng(1).normal(size=(5, 12))
    with torch.no_grad():
        got = numpy(layer.log_probabilities(ops.convert_to_tensor(h, dtype="float32"), model._tied_bands()))
    weights = {w.path.split("/")[-1]: numpy(w) for w in model.weights}
    if tie:
        head = np.concatenate([weights["band_0_vectors"], weights["cluster_vectors"]])
        tails = [(weights[f"band_{i}_vectors"], weights[f"band_{i}_projection"]) for i in (1, 2)]
    else:
        head = weights["head"]
        tails = [(weights[f"cluster_{i}_vectors"], weights[f"cluster_{i}_projection"]) for i in (1, 2)]
    head_p = softmax_rows(h @ head.T + weights["head_bias"])  # (5, 6 + 2)
    expected = [head_p[:, :6]]
    for i, (vectors, projection) in enumerate(tails, 1):
        expected.append(head_p[:, 6 + i - 1 : 6 + i] * softmax_rows(h @ projection @ vectors.T
                                                                      + weights[f"cluster_{i}_bias"]))
    np.testing.assert_allclose(np.exp(got), np.concatenate(expected, axis=1), rtol=1e-4, atol=1e-7)
    assert [tails[0][0].shape[1], tails[1][0].shape[1]] == [3, 1]  # 12 / 4, 12 / 16 dimensions


@pytest.mark.parametrize("tie", [False, True])
def test_cheap_path_equals_the_exact_one(tie):
    """Per token: the training path's log p(target) and top-1 hits equal the full distribution's, and so do the
    gradients of the mean loss, for targets in every cluster and most-likely words in every cluster."""
    layer = AdaptiveSoftmax(VOCAB, 12, CUTOFFS, tied=tie, init_scale=0.6, seed=3)
    layer.build()
    variables = list(layer.trainable_variables)
    bands = None
    if tie:
        embedding = AdaptiveInput(VOCAB, 12, CUTOFFS, init_scale=0.6, seed=4)
        embedding.build()
        variables += embedding.trainable_variables
    layer.tail_biases[0].assign(np.eye(11)[3] * 3)  # one likely word per cluster, so that some positions'
    layer.tail_biases[1].assign(np.eye(23)[5] * 3)  # most likely word is in cluster 1, some in cluster 2
    h = torch.tensor(np.random.default_rng(0).normal(scale=4, size=(200, 12)), dtype=torch.float32,
                     requires_grad=True)
    with torch.no_grad():
        full = numpy(layer.log_probabilities(h, embedding.bands() if tie else None))
    argmax = full.argmax(-1)
    assert min(np.bincount(np.digitize(argmax, CUTOFFS), minlength=3)) >= 5
    rng = np.random.default_rng(3)
    targets = np.where(rng.random(200) < 0.5, argmax, rng.integers(0, VOCAB, 200))  # half hits, half random
    assert min(np.bincount(np.digitize(targets, CUTOFFS), minlength=3)) >= 10

    def loss_and_gradients(path):
        bands = embedding.bands() if tie else None  # fresh tensors: the graph starts at the variables
        if path == "cheap":
            log_probs, hits = layer.target_log_probabilities(h, torch.as_tensor(targets), bands)
        else:
            all_log_probs = layer.log_probabilities(h, bands)
            log_probs = all_log_probs.gather(1, torch.as_tensor(targets)[:, None])[:, 0]
            hits = (log_probs >= all_log_probs.amax(-1)).sum()
        gradients = torch.autograd.grad(-log_probs.mean(), [h] + [v.value for v in variables])
        return numpy(log_probs), float(hits), [g.numpy() for g in gradients]

    cheap, exact = loss_and_gradients("cheap"), loss_and_gradients("exact")
    np.testing.assert_allclose(cheap[0], exact[0], atol=1e-5)
    np.testing.assert_allclose(cheap[0], full[np.arange(200), targets], atol=1e-5)
    assert cheap[1] == exact[1] == float((targets == argmax).sum()) > 50
    assert len(cheap[2]) == len(exact[2]) == 1 + len(variables)
    for a, b in zip(cheap[2], exact[2]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def ranked_sums(log_probs, targets, k):
    """-sum log p(target), top-1 and top-k hits from the whole (tokens, V) table, ties shared as
    torch_backend.scores shares them."""
    target = log_probs[np.arange(len(targets)), targets][:, None]
    above, tied = (log_probs > target).sum(1), (log_probs == target).sum(1)
    hits = [np.minimum(np.maximum(n - above, 0) / tied, 1).sum() for n in (1, k)]
    return -target.sum(), hits[0], hits[1]


@pytest.mark.parametrize("tie", [False, True])
def test_evaluation_scores_equal_ranking_the_whole_distribution(tie):
    """AdaptiveSoftmax.scores computes a tail cluster only where it can matter, and still gives the numbers of
    the whole table: targets in every cluster, top words in every cluster, and exact ties (a cluster whose
    words all have the same probability) shared the same way."""
    layer = AdaptiveSoftmax(VOCAB, 12, CUTOFFS, tied=tie, init_scale=0.6, seed=5)
    layer.build()
    bands = None
    if tie:
        embedding = AdaptiveInput(VOCAB, 12, CUTOFFS, init_scale=0.6, seed=6)
        embedding.build()
        bands = embedding.bands()
    layer.tail_biases[0].assign(np.eye(11)[3] * 3)  # a likely word in each cluster (top words everywhere)
    h = np.random.default_rng(1).normal(scale=3, size=(300, 12)).astype(np.float32)
    h[:40] = 0.0  # no signal: with a zero (or zero-projected) hidden state many words tie
    h = torch.tensor(h)
    with torch.no_grad():
        full = numpy(layer.log_probabilities(h, bands))
        rng = np.random.default_rng(2)
        targets = np.where(rng.random(300) < 0.4, full.argmax(-1), rng.integers(0, VOCAB, 300))
        assert min(np.bincount(np.digitize(targets, CUTOFFS), minlength=3)) >= 20
        for k in (5, 2):
            got = layer.scores(h, torch.as_tensor(targets), bands, k=k)
            want = ranked_sums(full, targets, k)
            assert got[0] == pytest.approx(want[0], rel=1e-6)
            assert got[1] == pytest.approx(want[1], abs=1e-6) and got[2] == pytest.approx(want[2], abs=1e-6)
    assert {0, 1} <= set(np.digitize(full.argmax(-1), CUTOFFS))  # the top word is not always a shortlist word
    assert ((full[:40, :, None] == full[:40, None, :]).sum((1, 2)) > VOCAB).all()  # ties exist in those rows


def test_train_step_loss_is_minus_log_p_of_the_targets(toy_corpus):
    config = tiny_config(toy_corpus, softmax="adaptive", cutoffs="6,17", hidden_size=12)
    model = build_model(config, VOCAB)
    trainer = Trainer(config, model, "float32")
    x, y = numpy(ids(4, 8, 5)).astype(np.int64), numpy(ids(4, 8, 6)).astype(np.int64)
    with torch.no_grad():
        log_probs = numpy(model.call_with_states(ops.convert_to_tensor(x, dtype="int32"))[0]).reshape(-1, VOCAB)
    expected = -log_probs[np.arange(32), y.reshape(-1)].mean()
    hits = (log_probs[np.arange(32), y.reshape(-1)] >= log_probs.max(-1)).sum()
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss, step_hits, _ = train_step(trainer, x, y, model.initial_states(4))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(step_hits) == hits
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables))


def test_adaptive_training_step_in_bfloat16_is_close_to_float32(toy_corpus):
    config = tiny_config(toy_corpus, softmax="adaptive", cutoffs="6,17", hidden_size=12)
    x, y = numpy(ids(4, 8, 5)).astype(np.int64), numpy(ids(4, 8, 6)).astype(np.int64)
    losses = []
    for precision in ("float32", "bfloat16"):
        keras.utils.set_random_seed(1)
        model = build_model(config, VOCAB)
        losses.append(float(train_step(Trainer(config, model, precision), x, y, model.initial_states(4))[0]))
    assert losses[1] == pytest.approx(losses[0], rel=0.02)


# ---- cutoffs and config ----------------------------------------------------------------------------------
def test_cutoffs_are_parsed_checked_and_resolved():
    assert parse_cutoffs("2000,10000") == [2000, 10000] == parse_cutoffs([2000, 10000])
    for bad in ("10000,2000", "5,5", "0,3", "a,b", "-1"):
        with pytest.raises(LstmlmError, match="--cutoffs must be increasing positive integers"):
            parse_cutoffs(bad)
    assert resolve_cutoffs("", 33278) == [2079, 11092]
    with pytest.raises(LstmlmError, match=r"^cutoffs 2000,10000: every cutoff must be below the vocabulary size "
                                          r"\(10,000 words\)$") as raised:  # the library names the argument
        resolve_cutoffs("2000,10000", 10000)
    assert raised.value.for_command_line().startswith("--cutoffs 2000,10000: every cutoff")  # the CLI the flag
    with pytest.raises(LstmlmError, match=r"^softmax adaptive: a vocabulary of 2 words is too small") as raised:
        resolve_cutoffs("", 2)
    assert raised.value.for_command_line().startswith("--softmax adaptive: a vocabulary of 2 words")
    assert Config(cutoffs=[20, 100]).cutoffs == "20,100"  # a JSON config's list
    with pytest.raises(LstmlmError, match="--cutoffs"):
        Config(softmax="adaptive", cutoffs="9,3").validate()
    with pytest.raises(LstmlmError, match="only the adaptive softmax has clusters"):
        Config(cutoffs="9,30").validate()
    with pytest.raises(LstmlmError, match="--softmax must be one of full, adaptive"):
        Config(softmax="hierarchical").validate()


def test_the_model_refuses_bad_cutoffs_from_a_damaged_config():
    for cutoffs in (None, [], [17, 6], [6, 6], [0, 6], [6, VOCAB], ["6"], [True, 6]):
        with pytest.raises(ValueError, match="cutoffs must be increasing positive integers"):
            make(cutoffs=cutoffs)
    with pytest.raises(ValueError, match="softmax must be 'full' or 'adaptive'"):
        make(softmax="sampled")


# ---- serialisation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_in_safe_mode_gives_identical_log_probabilities(tmp_path, tie):
    model = make(tie, dropout=0.2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is LSTMLanguageModel and loaded.get_config() == model.get_config()
    assert loaded.get_config()["softmax"] == "adaptive" and loaded.get_config()["cutoffs"] == CUTOFFS
    assert isinstance(loaded.adaptive_softmax, AdaptiveSoftmax)
    assert isinstance(loaded.embedding, AdaptiveInput) == tie
    x = ids(2, 11, 4)
    with torch.no_grad():
        np.testing.assert_array_equal(numpy(loaded.call_with_states(x)[0]), numpy(model.call_with_states(x)[0]))
    assert loaded.count_params() == model.count_params()


def test_tied_adaptive_input_shares_the_softmax_weights_and_is_smaller():
    untied, tied = make(False), make(True)
    # untied: an Embedding (V x 12) and the softmax's own head and clusters; tied: only the bands, shared
    assert tied.count_params() < untied.count_params()
    assert not any("softmax" in w.path and "vectors" in w.path and "cluster_vectors" not in w.path
                   for w in tied.weights)
    table = numpy(tied.embedding.embeddings)  # (V, d): band vectors projected up to d
    with torch.no_grad():
        looked_up = numpy(tied.embedding(ops.convert_to_tensor(np.arange(VOCAB)[None], dtype="int32"))[0])
    np.testing.assert_allclose(looked_up, table, rtol=1e-6, atol=1e-7)
    # the gate inspector reads the table like an Embedding's
    from lstmlm.analysis.gates import trace_gates

    assert trace_gates(tied, [1, 9, 30])[0]["forget_gate"].shape == (3, 12)


# ---- runs: resume, verbs, CLI ----------------------------------------------------------------------------
def run(config, out, **kwargs):
    train(config, out=out, log=lambda line: None, progress=False, command=["lstmlm", "train"], **kwargs)


def read_history(out):
    with open(out / rd.HISTORY, newline="") as file:
        return list(csv.DictReader(file))


def same_weights(a, b):
    wa, wb = rd.load_keras_model(a).get_weights(), rd.load_keras_model(b).get_weights()
    return len(wa) == len(wb) and all(np.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(wa, wb))


@pytest.mark.parametrize("tie", [False, True])
def test_interrupted_adaptive_run_resumes_like_an_unbroken_one(toy_corpus, tmp_path, monkeypatch, tie):
    config = tiny_config(toy_corpus, epochs=2, softmax="adaptive", cutoffs="4,12", tie_weights=tie, dropout=0.2,
                         layer_dropout=0.1, embedding_dropout=0.1)
    run(config, tmp_path / "straight")
    out, real_step, calls = tmp_path / "interrupted", epoch_module.train_step, []
    steps = num_stream_batches(int(read_history(tmp_path / "straight")[0]["train_tokens"]) + 1, 8, 8)

    def interrupting_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == steps + 3:  # in epoch 2, after 2 of its batches
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        run(config, out)
    monkeypatch.setattr(epoch_module, "train_step", real_step)
    state = json.loads((out / "state.json").read_text())
    assert (state["epoch"], state["batch"]) == (1, 2)
    train(None, resume=out, log=lambda line: None, progress=False)
    straight, resumed = read_history(tmp_path / "straight"), read_history(out)
    assert len(straight) == len(resumed) == 2
    for a, b in zip(straight, resumed):
        for key in set(HISTORY_FIELDS) - TIMING:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-4), key
    assert same_weights(tmp_path / "straight" / "checkpoints/model-02.keras", out / "checkpoints/model-02.keras")
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["softmax"] == "adaptive" and info["cutoffs"] == [4, 12]


@pytest.fixture(scope="module")
def adaptive_run(toy_corpus, tmp_path_factory):
    """An adaptive-softmax run trained through `lstmlm train --softmax adaptive --cutoffs 4,12`."""
    out = tmp_path_factory.mktemp("adaptive") / "run"
    argv = ["train", "--preset", "tiny", "--hidden-size", "16", "--num-steps", "8", "--epochs", "3",
            "--learning-rate", "0.03", "--precision", "float32", "--softmax", "adaptive", "--cutoffs", "4,12",
            "--train", str(toy_corpus["train"]), "--valid", str(toy_corpus["valid"]), "--test", str(toy_corpus["test"]),
            "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return out, stdout.getvalue()


def test_adaptive_run_learns_and_reports(adaptive_run):
    out, report = adaptive_run
    history = read_history(out)
    assert len(history) == 3
    assert float(history[-1]["valid_perplexity"]) < float(history[0]["valid_perplexity"])
    model = rd.load_run(out).model
    assert model.softmax == "adaptive" and model.cutoffs == [4, 12]
    vocabulary_size = json.loads((out / "config.json").read_text())["vocabulary_size"]
    assert float(history[-1]["valid_perplexity"]) < vocabulary_size / 3  # the toy grammar is learnt
    assert "valid: loss" in report and "test: loss" in report and "Predicted words:" in report


def entries(result):
    """The per-word list of a predict_next or score result (issue 11 names it predictions / word_scores)."""
    return next(result[key] for key in ("predictions", "word_scores", "words") if key in result)


def test_predict_generate_score_and_evaluate_on_an_adaptive_run(adaptive_run):
    from lstmlm.inference.language_model import load

    out, _ = adaptive_run
    model = load(out)
    prediction = model.predict_next("the cat", top_k=len(model.vocabulary))
    probabilities = [entry["probability"] for entry in entries(prediction)]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert probabilities == sorted(probabilities, reverse=True)
    verbs = {"sees", "likes", "finds", "chases", "hears", "wants"}  # 6 of the 26 words follow "the cat"
    assert sum(e["probability"] for e in entries(prediction) if e["word"] in verbs) > 0.3
    # score: each word's log p equals the predicted distribution's
    scored = model.score("the cat sees")
    p_sees = next(e["probability"] for e in entries(prediction) if e["word"] == "sees")
    assert entries(scored)[2]["log_probability"] == pytest.approx(math.log(p_sees), abs=1e-5)
    greedy = model.generate("the dog", 6, temperature=0)
    assert len(greedy["words"]) == 6 and all(w in model.vocabulary.index for w in greedy["words"])
    sampled = [model.generate("the dog", 6, temperature=0.8, seed=s)["words"] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]
    result = model.evaluate(split="test")
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert 0 < result["accuracy"] <= result["top5_accuracy"] <= 1
    # the same numbers as the model's own forward pass (the step model runs the adaptive layer itself)
    from lstmlm.data.corpus import read_split
    from lstmlm.inference.evaluate import evaluate_ids

    ids, _ = read_split(model.config, "test", model.vocabulary)
    assert evaluate_ids(model.model, ids, model.vocabulary)["loss"] == pytest.approx(result["loss"], rel=1e-5)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_an_adaptive_run_loads_in_every_inference_precision(adaptive_run, precision):
    """bfloat16 / int8 LSTM products, the adaptive softmax in float32: still a distribution, close to float32."""
    from lstmlm.inference.language_model import load

    out, _ = adaptive_run
    exact, model = load(out, precision="float32"), load(out, precision=precision)
    prediction = entries(model.predict_next("the cat", top_k=len(model.vocabulary)))
    assert sum(e["probability"] for e in prediction) == pytest.approx(1.0, abs=1e-5)
    reference = {e["word"]: e["probability"] for e in entries(exact.predict_next("the cat", top_k=30))}
    for entry in prediction[:5]:
        assert entry["probability"] == pytest.approx(reference[entry["word"]], abs=0.02)
    assert model.evaluate(split="valid")["perplexity"] == pytest.approx(exact.evaluate(split="valid")["perplexity"],
                                                                         rel=0.02)
    assert model.step_model.nbytes_per_word() > 0


def test_an_adaptive_run_saved_with_precision_auto_loads_without_a_flag(adaptive_run, tmp_path):
    """`lstmlm train --softmax adaptive` saves precision 'auto' by default, which inference reads as bfloat16 where
    the CPU has it: predict / evaluate must then work without --precision (the LSTM in bfloat16)."""
    import shutil

    from lstmlm.inference.language_model import load

    out, _ = adaptive_run
    copy = tmp_path / "auto"
    shutil.copytree(out, copy)
    info = json.loads((copy / "config.json").read_text())
    info["config"]["precision"] = "auto"
    (copy / "config.json").write_text(json.dumps(info))
    model = load(copy)
    assert sum(e["probability"] for e in entries(model.predict_next("the cat", top_k=40))) == pytest.approx(1, abs=1e-5)
    assert model.evaluate(split="valid")["perplexity"] == pytest.approx(
        load(out, precision="float32").evaluate(split="valid")["perplexity"], rel=0.02)


def test_onnx_export_of_an_adaptive_run_is_one_line(adaptive_run, tmp_path, capsys):
    out, _ = adaptive_run
    assert main(["export", str(out), "--out", str(tmp_path / "onnx")]) == 2
    assert capsys.readouterr().err.strip().startswith("lstmlm: error: export: a run with --softmax adaptive")


def test_cli_rejects_bad_cutoffs_before_writing_anything(toy_corpus, tmp_path, capsys):
    common = ["train", "--preset", "tiny", "--softmax", "adaptive", "--train", str(toy_corpus["train"]),
              "--valid", str(toy_corpus["valid"])]
    assert main([*common, "--cutoffs", "12,4", "--out", str(tmp_path / "a")]) == 2
    assert main([*common, "--cutoffs", "4,999", "--out", str(tmp_path / "b")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("lstmlm: error: --cutoffs must be increasing positive integers")
    assert errors[1].startswith("lstmlm: error: --cutoffs 4,999: every cutoff must be below the vocabulary size")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_adaptive_run_gives_the_same_numbers_on_jax(adaptive_run, toy_corpus):
    """The layer is keras.ops only: the torch-trained run predicts and evaluates identically on JAX."""
    pytest.importorskip("jax")
    from lstmlm.inference.language_model import load

    out, _ = adaptive_run
    script = ("import json, sys, keras, lstmlm\nfrom lstmlm.inference.language_model import load\nm = load(sys.argv[1])\n"
              "print(json.dumps({'backend': keras.backend.backend(), 'next': m.predict_next('the cat', 5),"
              " 'perplexity': m.evaluate(file=sys.argv[2])['perplexity']}))")
    done = subprocess.run([sys.executable, "-c", script, str(out), str(toy_corpus["test"])], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    on_jax = json.loads(done.stdout.strip().splitlines()[-1])
    model = load(out)
    on_torch = {"next": model.predict_next("the cat", 5),
                "perplexity": model.evaluate(file=toy_corpus["test"])["perplexity"]}
    assert on_jax["backend"] == "jax"
    assert [e["word"] for e in entries(on_jax["next"])] == [e["word"] for e in entries(on_torch["next"])]
    for a, b in zip(entries(on_jax["next"]), entries(on_torch["next"])):
        assert a["probability"] == pytest.approx(b["probability"], rel=1e-4)
    assert on_jax["perplexity"] == pytest.approx(on_torch["perplexity"], rel=1e-5)


def test_resume_of_an_adaptive_copy_leaves_the_original_untouched(adaptive_run, tmp_path):
    import shutil

    out, _ = adaptive_run
    before = tree_digest(out)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    train(Config(epochs=4), resume=copy, log=lambda line: None, progress=False)
    assert len(read_history(copy)) == 4 and tree_digest(out) == before


# ---- the benchmark's quick mode --------------------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_quick_mode_reports_every_variant(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import adaptive_softmax as benchmark

    result = benchmark.run_quick(warmup=1, steps=2, repeats=1, log=lambda line: None)
    assert result["mode"] == "quick" and result["tokens_per_step"] == 4 * 10
    assert set(result["variants"]) == set(benchmark.VARIANTS)
    for row in result["variants"].values():
        assert row["timed_steps"] == 2 and row["tokens_per_second"] > 0 and math.isfinite(row["loss_last"])
    rows = result["variants"]
    assert rows["adaptive, untied"]["parameters"] < rows["full, untied"]["parameters"]
    assert set(result["speedup_adaptive_over_full"]) == {"untied", "tied"}
    assert {"cpu", "torch_threads", "load_average_1_5_15", "command"} <= set(result["environment"])
    path = benchmark.write(result, tmp_path / "quick")
    assert json.loads(path.read_text())["variants"]["full, tied"]["tokens_per_second"] > 0
