"""Generation and prediction through the loaded run: incremental state == re-running the whole sequence."""

import numpy as np
import pytest
from keras import ops

from lstmlm.errors import LstmlmError
from lstmlm.inference.language_model import join_words
from lstmlm.inference.samplers import softmax
from lstmlm.data.tokenizer import EOS, UNK


def all_logits(model, ids):
    """Logits of the last position, re-running the whole sequence from a zero state (model.__call__)."""
    logits = model.model(ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)[None, :]))
    return np.asarray(ops.convert_to_numpy(ops.stop_gradient(logits))[0, -1], dtype=np.float64)


@pytest.mark.parametrize("prompt", ["the cat", "", "my friend likes"])
def test_greedy_equals_argmax_over_the_growing_sequence(loaded_tiny, prompt):
    result = loaded_tiny.generate(prompt, num_words=12, temperature=0)
    ids, words, unknown = loaded_tiny.encode_prompt(prompt)
    assert result["prompt_words"] == words and unknown == [] and result["unknown_words"] == []
    expected = []
    for _ in range(12):
        next_id = int(np.argmax(all_logits(loaded_tiny, ids)))
        expected.append(loaded_tiny.vocabulary.words[next_id])
        ids = ids + [next_id]
    assert result["words"] == expected
    assert result["text"] == join_words(expected)
    # greedy ignores the seed
    assert loaded_tiny.generate(prompt, num_words=12, temperature=0, seed=99)["words"] == expected


@pytest.mark.parametrize("words, text", [
    ([], ""),
    (["the", "cat"], "the cat"),
    (["the", "cat", EOS, "a", "dog"], "the cat\na dog"),
    ([EOS, "a", "dog", EOS], "\na dog\n"),
    (["a", EOS, EOS, "b"], "a\n\nb"),
    ([EOS, EOS], "\n\n"),
])
def test_join_words_writes_eos_as_newlines(words, text):
    assert join_words(words) == text


def test_seeded_sampling_is_reproducible(loaded_tiny):
    a = loaded_tiny.generate("the dog", num_words=30, temperature=1.0, seed=5)
    b = loaded_tiny.generate("the dog", num_words=30, temperature=1.0, seed=5)
    c = loaded_tiny.generate("the dog", num_words=30, temperature=1.0, seed=6)
    assert a == b
    assert a["words"] != c["words"]
    assert len(a["words"]) == 30 and set(a["words"]) <= set(loaded_tiny.vocabulary.words)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_words_are_within_the_top_k_at_each_step(loaded_tiny, top_k):
    result = loaded_tiny.generate("a bird", num_words=15, temperature=1.0, top_k=top_k, seed=3)
    ids = loaded_tiny.encode_prompt("a bird")[0]
    for word in result["words"]:
        logits = all_logits(loaded_tiny, ids)
        next_id = loaded_tiny.vocabulary.index[word]
        rank = int((logits > logits[next_id]).sum())
        assert rank < top_k, f"{word!r} has rank {rank}"
        ids = ids + [next_id]
    if top_k == 1:
        assert result["words"] == loaded_tiny.generate("a bird", num_words=15, temperature=0)["words"]


def test_top_p_words_are_within_the_nucleus(loaded_tiny):
    result = loaded_tiny.generate("the teacher", num_words=15, top_p=0.6, seed=1)
    ids = loaded_tiny.encode_prompt("the teacher")[0]
    for word in result["words"]:
        probabilities = softmax(all_logits(loaded_tiny, ids))
        next_id = loaded_tiny.vocabulary.index[word]
        above = probabilities[probabilities > probabilities[next_id]].sum()
        assert above < 0.6 + 1e-6  # the words more likely than it did not yet reach p
        ids = ids + [next_id]


def test_predict_next_is_sorted_softmax(loaded_tiny):
    result = loaded_tiny.predict_next("the cat", top_k=5)
    ids = loaded_tiny.encode_prompt("the cat")[0]
    probabilities = softmax(all_logits(loaded_tiny, ids))
    order = np.argsort(-probabilities, kind="stable")[:5]
    assert [entry["word"] for entry in result["predictions"]] == [loaded_tiny.vocabulary.words[i] for i in order]
    np.testing.assert_allclose([entry["probability"] for entry in result["predictions"]], probabilities[order],
                               rtol=1e-5)
    # after "the cat" the toy grammar always has a verb
    assert result["predictions"][0]["word"] in {"sees", "likes", "finds", "chases", "hears", "wants"}


def test_prompt_lookup_and_unknown_words(loaded_tiny):
    ids, words, unknown = loaded_tiny.encode_prompt("The CAT, zorblax sees")
    vocabulary = loaded_tiny.vocabulary
    assert words == ["the", "cat", UNK, "sees"]  # as written, lower-cased, then without punctuation
    assert unknown == ["zorblax"]
    assert ids == [vocabulary.index[EOS], vocabulary.index["the"], vocabulary.index["cat"], vocabulary.unk_id,
                   vocabulary.index["sees"]]
    result = loaded_tiny.predict_next("zorblax qwerty", top_k=3)
    assert result["unknown_words"] == ["zorblax", "qwerty"]
    assert len(result["predictions"]) == 3


def test_score_matches_predict(loaded_tiny):
    scored = loaded_tiny.score("the cat sees")
    assert scored["tokens"] == 3 and [w["word"] for w in scored["word_scores"]] == ["the", "cat", "sees"]
    p_sees = {w["word"]: w["probability"] for w in loaded_tiny.predict_next("the cat", top_k=100)["predictions"]}["sees"]
    assert scored["word_scores"][2]["log_probability"] == pytest.approx(np.log(p_sees), rel=1e-5)
    assert scored["perplexity"] == pytest.approx(np.exp(-scored["total_log_probability"] / 3))


def test_bad_generation_arguments(loaded_tiny):
    with pytest.raises(LstmlmError, match="temperature"):
        loaded_tiny.generate("the", num_words=3, temperature=-1)
    with pytest.raises(LstmlmError, match="^num_words"):
        loaded_tiny.generate("the", num_words=-1)
    with pytest.raises(LstmlmError, match="^top_k"):
        loaded_tiny.predict_next("the", top_k=0)
    assert loaded_tiny.generate("the", num_words=0)["words"] == []


def test_deprecated_words_keyword_still_works(loaded_tiny):
    with pytest.warns(DeprecationWarning, match="num_words"):
        old = loaded_tiny.generate("the", words=4, temperature=0)
    assert old == loaded_tiny.generate("the", num_words=4, temperature=0) and len(old["words"]) == 4


def test_a_deadline_stops_generation_with_a_prefix_of_the_same_text(loaded_tiny, monkeypatch):
    """generate(deadline=...) (the server's time bound) stops at a word boundary: the words so far are the
    first words of the same call without a deadline, and finish_reason says why it stopped."""
    import lstmlm.inference.language_model as language_model

    full = loaded_tiny.generate("the cat", 12, temperature=1.0, seed=7)
    assert full["finish_reason"] == "num_words" and len(full["words"]) == 12
    clock = iter(range(1000))  # a fake monotonic clock: one tick per reading
    monkeypatch.setattr(language_model.time, "monotonic", lambda: next(clock))
    cut = loaded_tiny.generate("the cat", 12, temperature=1.0, seed=7, deadline=5)  # readings 0..4 are before it
    assert cut["finish_reason"] == "time_limit"
    assert cut["words"] == full["words"][:5] and cut["prompt_words"] == full["prompt_words"]
    monkeypatch.undo()
    import time

    assert loaded_tiny.generate("the cat", 12, seed=7, deadline=time.monotonic() - 1)["words"] == []
    samples = loaded_tiny.generate("the cat", 6, seed=3, num_samples=2, deadline=time.monotonic() + 60)
    assert samples["finish_reason"] == "num_words" and [len(s["words"]) for s in samples["samples"]] == [6, 6]


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True])
def test_a_bad_seed_is_one_clear_error(loaded_tiny, seed):
    from lstmlm.errors import LstmlmError

    with pytest.raises(LstmlmError, match=r"^seed must be a non-negative integer, got "):
        loaded_tiny.generate("the", 3, seed=seed)
