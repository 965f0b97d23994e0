"""The learning rate as a pure function of where training stands (nanoGPT's `get_lr(it)`).

- constant
- decay: the rate stays for `learning_rate_decay_start` epochs, then is multiplied by `learning_rate_decay`
  every epoch (Zaremba et al. 2014: small halves after epoch 4; TF ptb_word_lm's
  `lr_decay ** max(epoch - max_epoch, 0)`)
- plateau: multiplied by `learning_rate_decay` for every epoch whose validation loss did not improve on the best
  before it (pytorch word_language_model's "anneal when validation stalls"); the validation history is the
  only state, and the run directory's history.csv already holds it
- cosine: from the initial rate down to 0 over the run; the run's length is the number of batches, or the
  `max_minutes` wall-time budget where that comes first
plus optional linear warm-up over `warmup_steps` batches.
"""

import math


def learning_rate(config, epoch, step, steps_per_epoch, elapsed_seconds=0.0, valid_losses=()):
    """The learning rate of one batch.

    Args:
        config: the run's Config.
        epoch: the epoch being trained (1-based).
        step: the batch's index over the whole run (0-based: (epoch - 1) * steps_per_epoch + batch).
        steps_per_epoch: batches in one epoch.
        elapsed_seconds: wall time of the run so far (cosine over a --max-minutes budget).
        valid_losses: the validation losses of the finished epochs, in order (plateau).

    Example:
        >>> from lstmlm.config import Config
        >>> config = Config(learning_rate=1.0, learning_rate_schedule="decay", learning_rate_decay=0.5,
        ...                 learning_rate_decay_start=4)
        >>> [learning_rate(config, epoch, 0, 100) for epoch in (1, 4, 5, 6)]
        [1.0, 1.0, 0.5, 0.25]
    """
    rate = config.learning_rate
    schedule = config.learning_rate_schedule
    if schedule == "decay":
        rate *= config.learning_rate_decay ** max(0, epoch - config.learning_rate_decay_start)
    elif schedule == "plateau":
        rate *= config.learning_rate_decay ** stalled_epochs(valid_losses)
    elif schedule == "cosine":
        progress = step / max(1, config.epochs * steps_per_epoch)
        if config.max_minutes > 0:
            progress = max(progress, elapsed_seconds / (60 * config.max_minutes))
        rate *= 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if config.warmup_steps and step < config.warmup_steps:
        rate *= (step + 1) / config.warmup_steps
    return rate


def stalled_epochs(valid_losses):
    """How many epochs did not improve on the best validation loss before them.

    Example:
        >>> stalled_epochs([5.0, 4.0, 4.5, 3.9, 3.9])
        2
    """
    best, stalled = math.inf, 0
    for loss in valid_losses:
        if loss < best:
            best = loss
        else:
            stalled += 1
    return stalled
