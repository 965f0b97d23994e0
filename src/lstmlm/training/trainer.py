"""One optimisation step: a `Trainer` owns what a step needs (model, optimizer, precision, device), and
`train_step` runs one batch (pytorch/examples' word_language_model's inner loop body).

The step is the same in one process and in N: the coordinator's forward call is the model's own, or under DDP
the same call with the gradients averaged over the processes during backward, so that N processes with B/N
streams each take the step one process takes with B streams (each process's loss is the mean over its equal share
of the tokens; the mean of those means is the mean over all of them; clipping then sees the averaged gradient).
"""

import numpy as np

from lstmlm import torch_backend
from lstmlm.precision import training_lstm_precision
from lstmlm.training.coordinator import Coordinator
from lstmlm.training.optimizer import load_optimizer_state, make_optimizer, optimizer_state

# Dropout seeds of rank r are offset by r * this (mod 2**32): rank 0 draws the single-process masks.
RANK_SEED_STRIDE = 0x9E3779B1


class Trainer:
    """What one optimisation step needs: the model, its optimizer, the precision and the device.

    Args:
        config: the run's Config (optimizer, learning_rate, weight_decay, clip_norm, sum_over_time, num_layers).
        model: a built LSTMLanguageModel.
        precision: 'float32' or 'bfloat16' (resolved: precision.training_precision).
        coordinator: the processes' coordinator (default: one process).

    Example:
        >>> from lstmlm.config import Config
        >>> from lstmlm.model.lstm_language_model import build_model
        >>> config = Config(hidden_size=8, num_steps=5, batch_size=2, precision="float32")
        >>> trainer = Trainer(config, build_model(config, 30), "float32")
        >>> x = np.arange(10).reshape(2, 5) % 30
        >>> loss, hits, states = train_step(trainer, x, (x + 1) % 30, trainer.model.initial_states(2))
        >>> 2.5 < float(loss) < 4.5   # about log(30) = 3.4 nats before any learning
        True
    """

    def __init__(self, config, model, precision, coordinator=None):
        self.config, self.model, self.precision = config, model, precision
        self.lstm_precision = training_lstm_precision(precision, config.optimizer)
        self.coordinator = coordinator or Coordinator()
        self.device = torch_backend.device_type()
        self.parameters = [v.value for v in model.trainable_variables]
        self.optimizer = make_optimizer(config, self.parameters)
        self.last_step_finite = True
        # (token_ids, states, training, targets=None) -> (logits, states); with targets (the adaptive softmax's
        # training path, only each target's cluster computed) -> (log p(target), hits, states)
        self.forward = self.coordinator.forward(model)

    def set_learning_rate(self, rate):
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def seed_dropout(self, epoch_number, batch):
        """Dropout masks depend only on (seed, rank, epoch, batch): a resumed run draws the unbroken run's masks,
        and each rank of a data-parallel run draws its own (rank 0: the single-process masks)."""
        for owner in [self.model, *self.model.lstm_layers]:
            seed = ((owner.seed or 0) + self.coordinator.rank * RANK_SEED_STRIDE) % 2**32
            owner.seed_generator.state.assign(np.array([seed, epoch_number * 1_000_003 + batch], dtype="uint32"))

    def optimizer_state(self):
        return optimizer_state(self.optimizer)

    def load_optimizer_state(self, arrays, groups):
        load_optimizer_state(self.optimizer, arrays, groups)

    @staticmethod
    def states_to_arrays(states):
        return {f"{kind}{i}": s.detach().float().cpu().numpy() for i, pair in enumerate(states)
                for kind, s in zip("hc", pair)}

    def states_from_arrays(self, arrays, rows=slice(None)):
        """The saved (h, c) per layer; `rows`: this rank's block of the saved single-process rows."""
        import torch

        return [tuple(torch.as_tensor(arrays[f"{kind}{i}"][rows], device=self.device) for kind in "hc")
                for i in range(self.config.num_layers)]


def train_step(trainer, x, y, states):
    """One optimisation step on a (batch, time) batch; returns (mean loss tensor, top-1 hits tensor, states).

    A step whose loss or gradient norm is not finite changes no weight and sets `trainer.last_step_finite` to
    False. The loss: mean cross-entropy in nats over the batch's tokens (the tutorial's softmax + one-hot
    categorical cross-entropy). With `sum_over_time` the gradient is that of the loss summed over time.
    """
    import torch

    config = trainer.config
    x = torch.as_tensor(x, dtype=torch.long, device=trainer.device)  # (batch, time)
    y = torch.as_tensor(y, dtype=torch.long, device=trainer.device).reshape(-1)  # (batch * time,)
    adaptive = trainer.model.softmax == "adaptive"
    with torch_backend.precision_context(trainer.precision), \
            torch_backend.float32_lstm(trainer.lstm_precision == "float32"):
        if adaptive:  # the same exact loss, computing only each target's cluster (adaptive_softmax.py)
            target_log_probs, hits, new_states = trainer.forward(x, states, True, targets=y)
        else:
            logits, new_states = trainer.forward(x, states, True)  # (batch, time, vocab)
    if adaptive:
        loss = -target_log_probs.mean()
    else:  # the loss and the top-1 hits (target logit = the row's maximum) in one pass, float32 arithmetic
        loss, hits = torch_backend.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)
    trainer.optimizer.zero_grad(set_to_none=True)
    (loss * x.shape[1] if config.sum_over_time else loss).backward()
    if config.clip_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(trainer.parameters, config.clip_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in trainer.parameters if p.grad is not None],
                                             foreach=True)
    # A nan/inf loss or gradient would poison every weight: skip the update (the caller counts it). Under DDP
    # the norm is that of the averaged gradient, the same on every rank (a rank's non-finite loss makes it
    # non-finite), so every rank skips the same steps; a rank's own loss alone would split the replicas.
    finite = torch.isfinite(norm)
    if trainer.coordinator.world_size == 1:
        finite &= torch.isfinite(loss)
    trainer.last_step_finite = bool(finite)
    if trainer.last_step_finite:
        trainer.optimizer.step()
    return loss.detach(), hits, new_states
