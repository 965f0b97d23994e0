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
