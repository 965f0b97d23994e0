"""Perplexity from a loss in nats, safe for any loss a diverging run can produce.

perplexity = exp(mean cross-entropy in nats). `math.exp` raises OverflowError above about 709.78 nats, which a
diverging learning rate reaches within a few steps; the perplexity of such a loss is reported as inf (it is
larger than any float), and a nan loss stays nan, so a progress line or a history row never crashes.
"""

import math


def perplexity(loss):
    """exp(loss) as a float: inf where that overflows, nan for a nan loss.

    Args:
        loss: mean cross-entropy in nats (a Python or numpy number).

    Example:
        >>> round(perplexity(math.log(120.0)), 6)
        120.0
        >>> perplexity(1e6), perplexity(float("nan"))
        (inf, nan)
    """
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def comparable(result, characters, words, tokenizer="word"):
    """The numbers that compare across tokenizers, from an evaluation's per-token `loss` (nats) and `tokens`.

    bits_per_character = total nats / ln 2 / characters of the text (newlines counted); word_perplexity =
    exp(total nats / whitespace-separated words, each newline counted as an `<eos>` word). A word model's tokens
    are exactly those words, so its word_perplexity is its perplexity.

    Example:
        >>> values = comparable({"loss": math.log(2), "tokens": 10, "perplexity": 2.0}, characters=20, words=5)
        >>> values["bits_per_character"], values["word_perplexity"]
        (0.5, 2.0)
        >>> comparable({"loss": math.log(2), "tokens": 10, "perplexity": 2.0}, 20, 5, "char")["word_perplexity"]
        4.0
    """
    total = result["loss"] * result["tokens"]
    word_perplexity = result["perplexity"] if tokenizer == "word" else perplexity(total / max(words, 1))
    return {"bits_per_character": total / math.log(2) / max(characters, 1), "word_perplexity": word_perplexity}
