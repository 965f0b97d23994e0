"""`lstmlm export`: the ONNX step model run in onnxruntime gives lstmlm's logits and greedy text."""

import json

import numpy as np
import pytest

from lstmlm.inference.export import export_onnx
from lstmlm.inference.step_model import KerasStepModel

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXT = ("the cat sees the ball today my friend likes a fish the dog chases some bread a bird hears the river "
        "our neighbour wants a song the teacher finds the house today the cat likes the river my friend sees "
        "a fish the dog hears a song a bird finds")


@pytest.fixture(scope="module")
def exported(loaded_tiny, tmp_path_factory):
    out = export_onnx(loaded_tiny, tmp_path_factory.mktemp("export") / "tiny")
    return out, ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])


def onnx_steps(session, ids, num_layers, hidden_size):
    """Feed ids one step at a time from a zero state; the logits after each."""
    h = c = np.zeros((num_layers, 1, hidden_size), np.float32)
    rows = []
    for index in ids:
        logits, h, c = session.run(None, {"ids": np.array([[index]], np.int64), "h": h, "c": c})
        rows.append(logits[0])
    return np.array(rows), (h, c)


def test_onnx_logits_match_lstmlm_over_a_50_word_text(loaded_tiny, exported):
    out, session = exported
    ids, words, unknown = loaded_tiny.encode_prompt(TEXT)
    assert len(words) == 50 and unknown == []
    model = loaded_tiny.model
    reference = KerasStepModel(model)  # the Keras layers themselves
    outputs, _ = reference.advance([ids], reference.initial_states(1))
    expected = reference.logits(outputs)[0]  # (51, vocabulary): after <eos> and after each word
    got, _ = onnx_steps(session, ids, model.num_layers, model.hidden_size)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_onnx_greedy_text_equals_lstmlm(loaded_tiny, exported):
    out, session = exported
    model = loaded_tiny.model
    prompt = "the teacher"
    expected = loaded_tiny.generate(prompt, 25, temperature=0)["words"]
    ids = loaded_tiny.encode_prompt(prompt)[0]
    logits, (h, c) = onnx_steps(session, ids, model.num_layers, model.hidden_size)
    next_id, words = int(np.argmax(logits[-1])), []
    for _ in range(25):
        words.append(loaded_tiny.vocabulary.words[next_id])
        logits, h, c = session.run(None, {"ids": np.array([[next_id]], np.int64), "h": h, "c": c})
        next_id = int(np.argmax(logits[0]))
    assert words == expected


def test_export_directory_has_vocabulary_and_description(loaded_tiny, exported, tiny_run):
    out, session = exported
    assert (out / "vocab.txt").read_text() == (tiny_run / "vocab.txt").read_text()
    info = json.loads((out / "export.json").read_text())
    vocabulary = loaded_tiny.vocabulary
    assert info["eos_id"] == vocabulary.index["<eos>"] and info["unk_id"] == vocabulary.unk_id
    assert info["vocabulary_size"] == len(vocabulary) and info["num_layers"] == loaded_tiny.model.num_layers
    assert [i.name for i in session.get_inputs()] == ["ids", "h", "c"]
    assert [o.name for o in session.get_outputs()] == ["logits", "h_out", "c_out"]
    # batch size is free: three rows at once give each row's own logits
    L, H = loaded_tiny.model.num_layers, loaded_tiny.model.hidden_size
    zeros = np.zeros((L, 3, H), np.float32)
    batch, _, _ = session.run(None, {"ids": np.array([[1], [2], [3]], np.int64), "h": zeros, "c": zeros})
    for row, index in enumerate([1, 2, 3]):
        single, _ = onnx_steps(session, [index], L, H)
        np.testing.assert_allclose(batch[row], single[0], atol=1e-6)
    assert not list(out.glob(".*tmp*"))
