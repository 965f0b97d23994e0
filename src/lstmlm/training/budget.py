"""The `--max-minutes` wall-time budget: it covers training and every validation pass, so a run stops early
enough to validate what it trained. What it does not cover: the report after training (the best model's
validation and test perplexity and the sample), which `lstmlm train` prints after the budget.

Mid-epoch, training stops when the time left is what the epoch-end validation will take. That reserve is the
last validation's measured time; before the first validation it is estimated by timing the model on a slice of
the validation split before training starts (so a large validation split cannot overshoot the budget).
"""

import time


class Budget:
    """Wall time of a run (resumed runs included) against its --max-minutes limit.

    Args:
        max_minutes: the limit; 0 = none.
        seconds_before: wall time spent by earlier sessions of this run (resume).

    Example:
        >>> budget = Budget(max_minutes=0)
        >>> budget.spent(), budget.leaves_time_for_validation()
        (False, True)
    """

    def __init__(self, max_minutes, seconds_before=0.0):
        self.limit = 60.0 * max_minutes
        self.seconds_before = seconds_before
        self.started = time.time()
        self.validation_seconds = 0.0  # measured, or estimated before the first validation

    def elapsed(self):
        return self.seconds_before + time.time() - self.started

    def spent(self):
        """True when no time is left to train and then validate (checked before an epoch starts): an epoch that
        could train at most a batch before it had to stop and validate again is not started."""
        return self.limit > 0 and self.elapsed() + self.validation_seconds >= self.limit

    def leaves_time_for_validation(self):
        """False when training further would leave too little time to validate (checked after each batch)."""
        return self.limit <= 0 or self.elapsed() + self.validation_seconds < self.limit

    def estimate_validation(self, evaluate, tokens, sample_tokens=2000):
        """Time `evaluate(sample)` on the first `sample_tokens` and scale to the split's `tokens`.

        Args:
            evaluate: a function of a token count that evaluates that many tokens of the validation split.
        """
        if self.limit <= 0 or tokens <= 0:
            return
        sample = min(tokens, sample_tokens)
        started = time.perf_counter()
        evaluate(sample)
        self.validation_seconds = (time.perf_counter() - started) * tokens / sample
