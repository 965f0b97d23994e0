"""Learning-rate schedules, evaluated per batch.

- constant
- decay: the rate stays for `lr_decay_start` epochs, then is multiplied by `lr_decay` every epoch
  (Zaremba et al. 2014: small halves after epoch 4; TF ptb_word_lm's `lr_decay ** max(epoch - max_epoch, 0)`)
- plateau: multiply by `lr_decay` whenever validation loss fails to improve (pytorch word_language_model)
- cosine: from the initial rate down to 0 over the run; the run's length is the number of batches, or the
  `max_minutes` wall-time budget where that comes first
plus optional linear warm-up over `warmup_steps` batches.
"""

import math


class LearningRate:
    def __init__(self, config, steps_per_epoch):
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.base = config.learning_rate  # changed by the plateau rule
        self.best = math.inf
        self.step = 0
        self.rate = config.learning_rate
        self.eval_seconds = 0.0

    def at_step(self, epoch, index, wall_seconds):
        config = self.config
        rate = self.base
        if config.lr_schedule == "decay":
            rate = config.learning_rate * config.lr_decay ** max(0, epoch - config.lr_decay_start)
        elif config.lr_schedule == "cosine":
            progress = self.step / max(1, config.epochs * self.steps_per_epoch)
            if config.max_minutes > 0:
                progress = max(progress, wall_seconds / (60 * config.max_minutes))
            rate = config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if config.warmup_steps and self.step < config.warmup_steps:
            rate *= (self.step + 1) / config.warmup_steps
        self.step += 1
        self.rate = rate
        return rate

    def end_epoch(self, valid_loss, eval_seconds=0.0):
        self.eval_seconds = eval_seconds
        if valid_loss < self.best:
            self.best = valid_loss
        elif self.config.lr_schedule == "plateau":
            self.base *= self.config.lr_decay

    def out_of_time(self, wall_seconds, during_epoch=False):
        """True when the --max-minutes budget is spent; mid-epoch, leave time for the validation pass."""
        if self.config.max_minutes <= 0:
            return False
        reserve = self.eval_seconds if during_epoch else 0.0
        return wall_seconds + reserve >= 60 * self.config.max_minutes

    def state(self):
        return {"base": self.base, "best": self.best, "step": self.step, "rate": self.rate,
                "eval_seconds": self.eval_seconds}

    def load_state(self, values):
        self.base, self.best, self.step = values["base"], values["best"], values["step"]
        self.rate, self.eval_seconds = values["rate"], values["eval_seconds"]
