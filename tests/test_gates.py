"""The numpy reference cell (gates.py) against the trained model, stock Keras, and `lstmlm inspect`."""

import json
import shutil

import keras
import numpy as np
import pytest
from helpers import numpy, png_size

from lstmlm import torch_backend
from lstmlm.cli import main
from lstmlm.errors import LstmlmError
from lstmlm.analysis.gates import TRACE_NAMES, split_weights, to_float64, trace_gates
from lstmlm.analysis.inspection import inspect_text
from lstmlm.model.lstm import lstm_loop

TEXT = "the cat sees a fish today the dog chases the ball zebra"  # the toy grammar's words, and one unknown
LENGTH = len(TEXT.split()) + 1  # with the leading <eos>


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run (2 layers of 16 units); read-only."""
    return tiny_run


@pytest.fixture(scope="module")
def language_model(loaded_tiny):
    return loaded_tiny


def test_split_weights_follows_the_keras_layout(language_model):
    layer = language_model.model.lstm_layers[0]
    kernel, recurrent, bias = to_float64(layer.kernel), to_float64(layer.recurrent_kernel), to_float64(layer.bias)
    weights = split_weights(layer)
    for k, gate in enumerate("ifgo"):  # Keras order: input, forget, cell input, output
        np.testing.assert_array_equal(weights[f"U_{gate}"], kernel[:, 16 * k: 16 * (k + 1)])
        np.testing.assert_array_equal(weights[f"V_{gate}"], recurrent[:, 16 * k: 16 * (k + 1)])
        np.testing.assert_array_equal(weights[f"b_{gate}"], bias[16 * k: 16 * (k + 1)])
    assert weights["U_i"].shape == (layer.kernel.shape[0], 16) and weights["V_o"].shape == (16, 16)


def test_reference_cell_reproduces_every_layer_of_the_model(language_model):
    model = language_model.model
    ids, _, unknown = language_model.encode_prompt(TEXT)
    assert unknown == ["zebra"] and len(ids) == LENGTH == 13  # <eos> + 12 words
    traces = trace_gates(model, ids)
    assert len(traces) == 2
    token_ids = keras.ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)[None, :])
    with torch_backend.no_grad():
        x = model.embedding(token_ids)  # (1, time, embedding_size)
        for layer, trace in zip(model.lstm_layers, traces):
            assert set(trace) == set(TRACE_NAMES)
            assert all(trace[name].shape == (LENGTH, 16) for name in TRACE_NAMES)
            x, (h, c) = layer(x)  # the fused kernel the model trains and predicts with
            np.testing.assert_allclose(trace["hidden_state"], numpy(x[0]), atol=1e-5)
            np.testing.assert_allclose(trace["hidden_state"][-1], numpy(h[0]), atol=1e-5)
            np.testing.assert_allclose(trace["cell_state"][-1], numpy(c[0]), atol=1e-5)
            for gate in ("input_gate", "forget_gate", "output_gate"):
                assert 0 < trace[gate].min() and trace[gate].max() < 1
        logits, states = model.call_with_states(token_ids)
    for (h, c), trace in zip(states, traces):
        np.testing.assert_allclose(trace["hidden_state"][-1], numpy(h[0]), atol=1e-5)
        np.testing.assert_allclose(trace["cell_state"][-1], numpy(c[0]), atol=1e-5)
    # the softmax layer on the reference output gives the model's logits
    dense = model.output_layer
    reference_logits = traces[-1]["hidden_state"] @ to_float64(dense.kernel) + to_float64(dense.bias)
    np.testing.assert_allclose(reference_logits, numpy(logits[0]), atol=1e-5)


def test_reference_cell_matches_stock_keras_lstm_and_the_loop(language_model):
    model = language_model.model
    ids, _, _ = language_model.encode_prompt(TEXT)
    traces = trace_gates(model, ids)
    x = to_float64(model.embedding.embeddings)[ids][None].astype("float32")  # (1, time, embedding_size)
    for layer, trace in zip(model.lstm_layers, traces):
        stock = keras.layers.LSTM(16, return_sequences=True, return_state=True)
        stock.build(x.shape)
        stock.set_weights([keras.ops.convert_to_numpy(w) for w in (layer.kernel, layer.recurrent_kernel, layer.bias)])
        outputs, h, c = stock(x)
        np.testing.assert_allclose(trace["hidden_state"], numpy(outputs[0]), atol=1e-5)
        np.testing.assert_allclose(trace["cell_state"][-1], numpy(c[0]), atol=1e-5)
        zeros = keras.ops.zeros((1, 16))
        loop_outputs, _, loop_c = lstm_loop(keras.ops.convert_to_tensor(x), zeros, zeros, layer.kernel,
                                            layer.recurrent_kernel, layer.bias)  # the unfused path
        np.testing.assert_allclose(trace["hidden_state"], numpy(loop_outputs[0]), atol=1e-5)
        np.testing.assert_allclose(trace["cell_state"][-1], numpy(loop_c[0]), atol=1e-5)
        x = trace["hidden_state"][None].astype("float32")  # next layer reads this layer's h


def test_inspect_json_matches_the_reference_cell(run_dir, language_model, capsys):
    assert main(["inspect", str(run_dir), "--text", TEXT, "--layer", "1", "--units", "5", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "zebra" in captured.err  # the unknown-word note goes to stderr, stdout is only JSON
    assert result["unknown_words"] == ["zebra"]
    assert (result["layer"], result["num_layers"], result["hidden_size"], result["units"]) == (1, 2, 16, 5)
    ids, _, _ = language_model.encode_prompt(TEXT)
    words = [p["word"] for p in result["positions"]]
    assert words == ["<eos>"] + TEXT.split()[:-1] + ["<unk>"]
    trace = trace_gates(language_model.model, ids)[0]
    for t, position in enumerate(result["positions"]):
        for name in TRACE_NAMES:
            assert len(position[name]) == 5
            np.testing.assert_allclose(position[name], trace[name][t, :5], atol=1e-6)  # rounded to 6 decimals
    logits = language_model._all_logits(ids)  # (time, vocabulary)
    predictions = [language_model.vocabulary.words[i] for i in np.argmax(logits, axis=-1)]
    assert [p["top_prediction"] for p in result["positions"]] == predictions


def test_inspect_defaults_last_layer_and_all_units(language_model):
    result = inspect_text(language_model, "the cat", units=0)
    assert result["layer"] == 2 and result["units"] == 16
    trace = trace_gates(language_model.model, language_model.encode_prompt("the cat")[0])[1]
    np.testing.assert_allclose([p["cell_state"] for p in result["positions"]], trace["cell_state"], atol=1e-6)
    assert inspect_text(language_model, "the cat")["units"] == 16  # default 32, fewer units exist


def test_inspect_writes_the_heatmap(run_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "gates.png"
    assert main(["inspect", str(run_dir), "--text", "the cat sees a fish", "--units", "8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    width, height = png_size(out)
    assert 600 <= width <= 2000 and 400 <= height <= 2000
    copy = tmp_path / "run"  # without --out the heatmap goes into the run directory: a copy of the shared one
    shutil.copytree(run_dir, copy)
    assert main(["inspect", str(copy), "--text", "the cat"]) == 0
    assert capsys.readouterr().out.strip() == str(copy / "plots" / "inspect-layer-2.png")
    assert png_size(copy / "plots" / "inspect-layer-2.png")[0] >= 600


def test_inspect_user_errors(run_dir, language_model, capsys):
    with pytest.raises(LstmlmError, match="between 1 and 2"):
        inspect_text(language_model, "the cat", layer=3)
    with pytest.raises(LstmlmError, match="no words"):
        inspect_text(language_model, "   ")
    assert main(["inspect", str(run_dir), "--text", "the", "--units", "-1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
