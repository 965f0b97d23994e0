"""perplexity(loss): exp(loss), inf where exp overflows (a diverging run), nan stays nan; and its users."""

import math

import numpy as np
import pytest

from lstmlm.metrics import perplexity


@pytest.mark.parametrize("loss, expected", [(0.0, 1.0), (math.log(120.0), 120.0), (709.0, math.exp(709.0)),
                                            (-math.inf, 0.0)])
def test_is_exp_of_the_loss(loss, expected):
    assert perplexity(loss) == pytest.approx(expected, rel=1e-12)
    assert type(perplexity(loss)) is float


@pytest.mark.parametrize("loss", [710.0, 1e6, 1e308, math.inf, np.float32(1e30), np.float64(800.0)])
def test_overflow_is_inf_not_an_exception(loss):
    assert perplexity(loss) == math.inf


@pytest.mark.parametrize("loss", [math.nan, np.float32("nan"), np.float64("nan")])
def test_nan_stays_nan(loss):
    assert math.isnan(perplexity(loss))


def test_evaluate_and_score_of_a_model_whose_loss_overflows_exp(loaded_tiny):
    """Logits scaled by 1e5 give losses of tens of thousands of nats: perplexity inf, no OverflowError."""
    from lstmlm.inference.evaluate import evaluate_ids
    from lstmlm.inference.language_model import LanguageModel

    model = loaded_tiny.model
    original = [np.array(v) for v in model.output_layer.get_weights()]
    try:
        model.output_layer.set_weights([w * 1e5 for w in original])
        ids = loaded_tiny.vocabulary.encode("the cat sees the fish <eos> a bird hears a song".split())
        result = evaluate_ids(model, ids, loaded_tiny.vocabulary)
        assert result["loss"] > 1000 and result["perplexity"] == math.inf
        fresh = LanguageModel(loaded_tiny.run_directory)  # its own weight cache, built from the scaled weights
        score = fresh.score("the cat sees the fish today a bird hears a song")
        assert -score["total_log_probability"] / score["tokens"] > 1000 and score["perplexity"] == math.inf
    finally:
        model.output_layer.set_weights(original)
        loaded_tiny.refresh()
