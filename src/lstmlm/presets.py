"""Named configs. Each is a dict of only the fields that differ from `Config`'s defaults (Zaremba "small").

Sources: the Keras LSTM tutorial (adventuresinmachinelearning.com, keras_lstm.py) and Zaremba, Sutskever &
Vinyals 2014, "Recurrent Neural Network Regularization" (arXiv:1409.2329), Table 1 and section 4.1.
"""

from lstmlm.config import Config
from lstmlm.errors import LstmlmError

# Zaremba "medium" and "large" share everything but size, dropout, initialisation, clipping and decay.
_ZAREMBA_REGULARISED = dict(num_steps=35, dropout=0.5, input_dropout=0.5, layer_dropout=0.5)

PRESETS = {
    # Zaremba "small" (non-regularised): 2x200, 20 steps, SGD lr 1 halved every epoch after epoch 4, clip 5,
    # init +-0.1, 13 epochs -- the Config defaults, so this preset changes nothing. Zaremba's recipes train on
    # the loss summed over the time steps (sum_over_time): lr 1 and the clip norms refer to that sum.
    "small": dict(),
    # The README's first command: "small" cut to 2 epochs (lr halved for the second), under 10 minutes.
    "quick": dict(learning_rate_decay_start=1, epochs=2, max_minutes=9.0),
    # Seconds on a laptop: the smoke-test model.
    "tiny": dict(hidden_size=32, num_steps=10, batch_size=8, epochs=2, optimizer="adam", learning_rate=0.01,
                 learning_rate_schedule="constant", init_scale=0.0, sum_over_time=False, max_vocabulary_size=10000),
    # The tutorial, exactly: 30-step windows advanced by num_steps, zero state per window, Embedding 500,
    # LSTM 500 x2, Dropout 0.5, Dense(vocab), Adam defaults, Keras' default initialisers, no clipping, the mean
    # loss per token, 50 epochs, a checkpoint per epoch.
    "tutorial": dict(batching="window", num_steps=30, skip_step=30, hidden_size=500, dropout=0.5,
                     optimizer="adam", learning_rate=0.001, learning_rate_schedule="constant", clip_norm=0.0,
                     init_scale=0.0, sum_over_time=False, epochs=50),
    # Zaremba "medium": 2x650, 50% dropout on the non-recurrent connections, lr / 1.2 after epoch 6.
    "medium": dict(_ZAREMBA_REGULARISED, hidden_size=650, init_scale=0.05, learning_rate_decay=1 / 1.2,
                   learning_rate_decay_start=6, epochs=39),
    # Zaremba "large": 2x1500, 65% dropout, lr / 1.15 after epoch 14, clip 10.
    "large": dict(_ZAREMBA_REGULARISED, hidden_size=1500, dropout=0.65, input_dropout=0.65, layer_dropout=0.65,
                  init_scale=0.04, clip_norm=10.0, learning_rate_decay=1 / 1.15, learning_rate_decay_start=14,
                  epochs=55),
    # The best PTB perplexity we could aim for in 60 minutes of wall time (training and its validations) on a
    # 2-core CPU: a tied (Press & Wolf 2017), variationally regularised (Gal & Ghahramani 2016; embedding dropout
    # and weight drop as in Merity et al. 2017) 2x256 LSTM, SGD at 20 with clip 0.25 (pytorch
    # word_language_model's settings) annealed to 0 by a cosine over the time budget, so the run ends annealed.
    # Validation during training runs on 10 streams, as the peer's does: an exact (batch 1) pass over PTB's
    # valid split cost about a minute of a 15-minute budget (docs/race.md); `lstmlm evaluate` stays exact.
    # In 15 minutes at 2 threads it reached PTB test 88.34 against the pytorch/examples recipe's 106.50 (10.5
    # epochs; a variant with less dropout lost on validation, docs/runs/race/ptb-15min-tuning.md).
    "speedrun": dict(hidden_size=256, num_steps=35, tie_weights=True, dropout=0.2, input_dropout=0.2,
                     layer_dropout=0.2, variational=True, embedding_dropout=0.05, weight_drop=0.1,
                     learning_rate=20.0, clip_norm=0.25, learning_rate_schedule="cosine", init_scale=0.0,
                     sum_over_time=False, epochs=60, max_minutes=60.0, evaluation_batch_size=10),
}
# The speedrun for large vocabularies (WikiText-2's 33,278 words): the same recipe with the adaptive softmax
# (tied: adaptive input embeddings). On WikiText-2 in 15 minutes at 1 thread it trained 4.9x the tokens/s of the
# pytorch/examples recipe and reached test perplexity 152.3 against its 289.0 (docs/race.md).
PRESETS["speedrun-adaptive"] = dict(PRESETS["speedrun"], softmax="adaptive")
# The speedrun for an hour at 2 threads or more: 2x384 (6.2M parameters) with more dropout. By the end of such a
# budget the 2x256 model had flattened (train perplexity 48 against valid 84.5); this one trains 26.6 epochs
# instead of 49.5 and reached PTB test 76.64 against the 2x256's 79.84 and the pytorch/examples recipe's 87.11
# (60 minutes, 2 threads; docs/race.md). Chosen before that run, not tuned on validation. For 15 minutes the
# 2x256 `speedrun` (about 12 epochs) or `speedrun-light` (about 7 or fewer) is the recipe that was measured.
PRESETS["speedrun-wide"] = dict(PRESETS["speedrun"], hidden_size=384, dropout=0.3, input_dropout=0.3,
                                layer_dropout=0.25, embedding_dropout=0.1, weight_drop=0.15)
# The speedrun for budgets of about 7 epochs or fewer (PTB in 15 minutes at 1 thread): the same 2x256 model with
# light dropout and no embedding dropout or weight drop. Side by side at 1 thread for 15 minutes it reached PTB
# valid 97.48 (10 streams, 7.3 epochs) against `speedrun`'s 100.02 (6.9 epochs); with 12 epochs (2 threads)
# it overfitted and lost, 96.09 against 90.94 (docs/runs/race/ptb-15min-tuning.md).
PRESETS["speedrun-light"] = dict(PRESETS["speedrun"], dropout=0.1, input_dropout=0.1, layer_dropout=0.1,
                                 embedding_dropout=0.0, weight_drop=0.0, max_minutes=15.0)

# The character speedrun: PTB-char (`--data ptb-char`: bundled PTB read as characters, data/corpus.py) on a
# 2-core CPU. Characters need long unrolls, not a big softmax (51 symbols): 2x256 (embedding 128), 100-step
# unrolls of 32 streams, Adam at 0.003 annealed by a cosine over the time budget, light dropout. Chosen on
# validation by 4-minute runs at 2 threads (docs/runs/char-probe.json): this one reached valid 1.719 bits per
# character (24,000 characters/s, 1.1 epochs) against 1.822 for 2x512 with 16 streams (7,200/s) and 3.03 for
# 2x512 with 64 streams (4,800/s: too few updates). Validation on 10 streams as in `speedrun`.
PRESETS["speedrun-char"] = dict(data="ptb-char", tokenizer="char", hidden_size=256, embedding_size=128,
                                num_steps=100, batch_size=32, dropout=0.1, optimizer="adam",
                                learning_rate=0.003, clip_norm=1.0, learning_rate_schedule="cosine",
                                init_scale=0.0, sum_over_time=False, epochs=60, max_minutes=60.0,
                                evaluation_batch_size=10)

# The subword speedrun: a byte-level BPE vocabulary of 8,000 learned on the training split (`--tokenizer bpe`,
# data/tokenizers.py), nothing ever <unk>, on the 2x256 tied `speedrun` model with a full softmax (8,000 rows
# cost about what the adaptive softmax's head and bands cost at WikiText-2's 33,278 words). For raw text and for
# WikiText-2 scored per word (benchmarks/subword.py). PROBE
PRESETS["speedrun-bpe"] = dict(PRESETS["speedrun-light"], tokenizer="bpe", vocabulary_size=8000)


def preset(name, **overrides):
    """Return the Config of a named preset with `overrides` applied.

    Example:
        >>> preset("small", epochs=1).hidden_size
        200
    """
    if name not in PRESETS:
        raise LstmlmError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return Config(**{**PRESETS[name], **overrides})
