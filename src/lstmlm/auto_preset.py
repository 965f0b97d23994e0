"""`--preset auto`: the speedrun recipe sized to the corpus, the time budget and this machine.

What it measures before training: the training split's tokens and vocabulary (the corpus is read once, through the
corpus cache, so training then starts from the cache), and this machine's training tokens/s for each candidate
width (a few real training steps of each, with the run's precision and threads). What it chooses, by rules
taken from the measured races (docs/race.md, docs/runs/race/):

1. Softmax: adaptive above 20,000 words (WikiText-2's 33,278: `speedrun-adaptive` trained 4.9x the tokens/s of
   the full softmax's recipe and won), full below.
2. Width (2 layers): the widest of 128, 200, 256, 384, 512 units that (a) the data supports -- its LSTM weights
   (16 x width^2) at most 3x the training tokens (PTB's 930k tokens: up to 384; a 259k-token novel: up to 200,
   the width that won there) -- and (b) the budget trains for at least 6 epochs at the measured speed (PTB at 15
   minutes and 1 thread: 2x256 at 6.5 epochs was the best measured recipe). Without a time budget (--epochs
   only), (a) alone.
3. Regularisation by the epochs the budget gives that width: 8 or fewer -> `speedrun-light`'s light dropout
   (it won at ~7 epochs); more than 20, or weights above the training tokens -> `speedrun-wide`'s heavier
   dropout (it won at 27 epochs); between -> `speedrun`'s.
4. Small corpora (under 500,000 training tokens) stop early when validation has not improved for 3 epochs (the
   259k-token novel's validation bottomed at epoch 11 of 38 and then rose); the best model is kept.
5. Everything else is `speedrun`'s: tied weights, variational and embedding dropout, weight drop, SGD at 20 with
   clipping at 0.25, a cosine annealed over the budget, validation on 10 streams.

Explicit flags (and --config files) override every choice; the choice, its reasons and the measured speeds go
into config.json ("auto") and are printed as one short block. `auto` never changes any named preset.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from lstmlm.errors import LstmlmError

WIDTHS = (128, 200, 256, 384, 512)
ADAPTIVE_VOCABULARY = 20_000
DATA_RATIO = 3.0  # LSTM weights (16 x width^2 for 2 layers) at most this many times the training tokens
MIN_EPOCHS = 6
LIGHT_EPOCHS, HEAVY_EPOCHS = 8, 20
SMALL_CORPUS, SMALL_CORPUS_PATIENCE = 500_000, 3
BUDGET_SHARE = 0.9  # of the wall-clock budget spent training (the rest: validation, checkpoints)
SPEED_STEPS = 3  # timed training steps per candidate width, after one warm-up step

REGULARISATION = {  # the three speedrun presets' dropout settings (presets.py)
    "light": dict(dropout=0.1, input_dropout=0.1, layer_dropout=0.1, embedding_dropout=0.0, weight_drop=0.0),
    "standard": dict(dropout=0.2, input_dropout=0.2, layer_dropout=0.2, embedding_dropout=0.05, weight_drop=0.1),
    "heavy": dict(dropout=0.3, input_dropout=0.3, layer_dropout=0.25, embedding_dropout=0.1, weight_drop=0.15),
}


@dataclass
class AutoChoice:
    """What `auto` chose (config fields), why (one line each) and what it measured."""

    fields: dict
    reasons: list
    measured: dict = field(default_factory=dict)

    def to_dict(self):
        return {"fields": self.fields, "reasons": self.reasons, "measured": self.measured}


def lstm_weights(width):
    """Weights of a 2-layer LSTM of `width` units with `width`-wide inputs: 2 x 4 x width x 2 x width."""
    return 16 * width * width


def choose(train_tokens, vocabulary_size, max_minutes=0.0, speeds=None):
    """The recipe for a corpus and budget, from numbers alone (no corpus, no model).

    Args:
        train_tokens: tokens of the training split.
        vocabulary_size: ids of the vocabulary.
        max_minutes: the wall-clock budget (0: none; the width then follows the data alone).
        speeds: {width: training tokens/s on this machine}; needed when max_minutes > 0.
    Returns:
        AutoChoice.

    Example:
        >>> choice = choose(929_589, 10_000, 15, {128: 16000, 200: 10000, 256: 7100, 384: 4000})  # PTB, 1 thread
        >>> choice.fields["hidden_size"], choice.fields["softmax"], choice.fields["dropout"]
        (256, 'full', 0.1)
    """
    fields, reasons = {}, []
    adaptive = vocabulary_size > ADAPTIVE_VOCABULARY
    fields["softmax"] = "adaptive" if adaptive else "full"
    reasons.append(f"softmax {fields['softmax']}: {vocabulary_size:,} words "
                   f"({'above' if adaptive else 'at most'} {ADAPTIVE_VOCABULARY:,})")
    supported = [w for w in WIDTHS if lstm_weights(w) <= DATA_RATIO * train_tokens] or [WIDTHS[0]]
    epochs = None
    if max_minutes > 0:
        if not speeds:
            raise ValueError("choose: a time budget needs the measured speeds")
        tokens = {w: speeds[w] * max_minutes * 60 * BUDGET_SHARE for w in supported if w in speeds}
        fits = [w for w in supported if w in tokens and tokens[w] / train_tokens >= MIN_EPOCHS]
        width = fits[-1] if fits else min(tokens, key=lambda w: -tokens[w])  # else the fastest
        epochs = tokens[width] / train_tokens
        reasons.append(f"hidden_size {width}: the widest the data supports ({lstm_weights(supported[-1]):,} LSTM "
                       f"weights <= {DATA_RATIO:g} x {train_tokens:,} tokens: {supported[-1]}) that trains "
                       f">= {MIN_EPOCHS} epochs in {max_minutes:g} min at {speeds[width]:,.0f} tokens/s "
                       f"(about {epochs:.1f} epochs)" if fits else
                       f"hidden_size {width}: no width trains {MIN_EPOCHS} epochs in {max_minutes:g} min; the "
                       f"fastest ({speeds[width]:,.0f} tokens/s, about {epochs:.1f} epochs)")
    else:
        width = supported[-1]
        reasons.append(f"hidden_size {width}: the widest the data supports ({DATA_RATIO:g} x {train_tokens:,} "
                       "training tokens >= its LSTM weights); no time budget")
    fields["hidden_size"] = width
    heavy_data = lstm_weights(width) > train_tokens
    if epochs is not None and epochs <= LIGHT_EPOCHS:
        kind, why = "light", f"about {epochs:.1f} epochs (<= {LIGHT_EPOCHS})"
    elif (epochs is not None and epochs > HEAVY_EPOCHS) or heavy_data:
        kind = "heavy"
        why = (f"about {epochs:.1f} epochs (> {HEAVY_EPOCHS})" if epochs is not None and epochs > HEAVY_EPOCHS
               else f"{lstm_weights(width):,} LSTM weights > {train_tokens:,} training tokens")
    else:
        kind, why = "standard", ("about {:.1f} epochs".format(epochs) if epochs is not None else "no time budget")
    fields.update(REGULARISATION[kind])
    reasons.append(f"dropout {kind} ({', '.join(f'{k} {v:g}' for k, v in REGULARISATION[kind].items())}): {why}")
    if train_tokens < SMALL_CORPUS:
        fields["patience"] = SMALL_CORPUS_PATIENCE
        reasons.append(f"patience {SMALL_CORPUS_PATIENCE}: {train_tokens:,} training tokens (< {SMALL_CORPUS:,}): "
                       "stop when validation has not improved for that many epochs")
    return AutoChoice(fields, reasons, {"train_tokens": int(train_tokens), "vocabulary_size": int(vocabulary_size),
                                        "max_minutes": max_minutes,
                                        "tokens_per_second": {str(w): round(s, 1) for w, s in (speeds or {}).items()},
                                        "expected_epochs": None if epochs is None else round(epochs, 2)})


def measure_speeds(config, vocabulary_size, widths, precision, steps=SPEED_STEPS):
    """{width: training tokens/s}: `steps` timed training steps (after one warm-up) of each width's model on
    random ids of the run's batch shape (speed does not depend on what the ids are)."""
    import keras

    from lstmlm.model.lstm_language_model import build_model
    from lstmlm.training.trainer import Trainer, train_step

    rng = np.random.default_rng(0)
    speeds = {}
    for width in widths:
        candidate = config.replace(hidden_size=width)
        keras.utils.set_random_seed(candidate.seed)
        trainer = Trainer(candidate, build_model(candidate, vocabulary_size), precision)
        states = trainer.model.initial_states(candidate.batch_size)
        x = rng.integers(0, vocabulary_size, (candidate.batch_size, candidate.num_steps))
        y = rng.integers(0, vocabulary_size, x.shape)
        train_step(trainer, x, y, states)  # warm-up: first-call set-up is not speed
        started = time.perf_counter()
        for _ in range(steps):
            loss, _, _ = train_step(trainer, x, y, states)
        float(loss)  # wait for the last step
        speeds[width] = steps * x.size / (time.perf_counter() - started)
    return speeds


def resolve(config, explicit, log=print):
    """The auto recipe for `config` (speedrun's values with the explicit fields applied); returns
    (Config, AutoChoice). `explicit`: names of fields the user set (flags, --config file): never changed."""
    import torch

    from lstmlm.data.corpus import load_corpus
    from lstmlm.precision import training_precision

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    corpus = load_corpus(config)  # through the cache: training reads it again from there
    vocabulary_size, train_tokens = len(corpus.vocabulary), len(corpus["train"])
    widths = [w for w in WIDTHS if lstm_weights(w) <= DATA_RATIO * train_tokens] or [WIDTHS[0]]
    speeds = None
    if config.max_minutes > 0 and "hidden_size" not in explicit:
        softmax = config.softmax if "softmax" in explicit else (
            "adaptive" if vocabulary_size > ADAPTIVE_VOCABULARY else "full")
        speeds = measure_speeds(config.replace(softmax=softmax), vocabulary_size, widths,
                                training_precision(config.precision))
    choice = choose(train_tokens, vocabulary_size, config.max_minutes, speeds)
    applied = {name: value for name, value in choice.fields.items() if name not in explicit}
    kept = sorted(set(choice.fields) - set(applied))
    if kept:
        choice.reasons.append(f"kept as given: {', '.join(kept)}")
    log("preset auto: " + "; ".join(choice.reasons))
    return config.replace(**applied).validate(), choice


def check_layout(processes):
    if processes is not None and processes > 1:
        raise LstmlmError("--preset auto measures this machine before training and cannot yet agree on one "
                          "choice across processes: run `lstmlm train --preset auto --print-config ...` once and "
                          "train with --config on that file", argument="preset")
