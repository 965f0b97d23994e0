"""Named configs. Each is a dict of the fields that differ from `Config`'s defaults.

Sources: the Keras LSTM tutorial (adventuresinmachinelearning.com, keras_lstm.py) and Zaremba, Sutskever &
Vinyals 2014, "Recurrent Neural Network Regularization" (arXiv:1409.2329), Table 1 and section 4.1.
"""

from lstmlm.config import Config
from lstmlm.errors import LstmlmError

PRESETS = {
    # Seconds on a laptop: the smoke-test model.
    "tiny": dict(hidden_size=32, num_layers=2, num_steps=10, batch_size=8, epochs=2, optimizer="adam",
                 learning_rate=0.01, clip_norm=5.0, max_vocab=10000),
    # The tutorial, exactly: 30-step windows advanced by num_steps, zero state per window, Embedding 500,
    # LSTM 500 x2, Dropout 0.5, Dense(vocab), Adam defaults, no clipping, 50 epochs, a checkpoint per epoch.
    "tutorial": dict(batching="window", num_steps=30, batch_size=20, skip_step=30, hidden_size=500, num_layers=2,
                     dropout=0.5, optimizer="adam", learning_rate=0.001, epochs=50),
    # Zaremba's recipes train on the loss summed over the time steps (sum_over_time): lr 1 and the clip norms
    # refer to that sum, i.e. to num_steps times the per-token mean.
    # Zaremba "small" (non-regularised): 2x200, 20 steps, SGD lr 1 halved every epoch after epoch 4, clip 5.
    "small": dict(hidden_size=200, num_layers=2, num_steps=20, batch_size=20, optimizer="sgd", learning_rate=1.0,
                  lr_schedule="decay", lr_decay=0.5, lr_decay_start=4, epochs=13, clip_norm=5.0, init_scale=0.1,
                  sum_over_time=True),
    # The README's first command: the "small" recipe cut to 2 epochs (lr halved for the second), under 10 minutes.
    "quick": dict(hidden_size=200, num_layers=2, num_steps=20, batch_size=20, optimizer="sgd", learning_rate=1.0,
                  lr_schedule="decay", lr_decay=0.5, lr_decay_start=1, epochs=2, clip_norm=5.0, init_scale=0.1,
                  sum_over_time=True, max_minutes=9.0),
    # Zaremba "medium": 2x650, 50% dropout on the non-recurrent connections, lr / 1.2 after epoch 6.
    "medium": dict(hidden_size=650, num_layers=2, num_steps=35, batch_size=20, optimizer="sgd", learning_rate=1.0,
                   lr_schedule="decay", lr_decay=1 / 1.2, lr_decay_start=6, epochs=39, clip_norm=5.0,
                   init_scale=0.05, dropout=0.5, input_dropout=0.5, layer_dropout=0.5,
                   sum_over_time=True),
    # Zaremba "large": 2x1500, 65% dropout, lr / 1.15 after epoch 14, clip 10.
    "large": dict(hidden_size=1500, num_layers=2, num_steps=35, batch_size=20, optimizer="sgd", learning_rate=1.0,
                  lr_schedule="decay", lr_decay=1 / 1.15, lr_decay_start=14, epochs=55, clip_norm=10.0,
                  init_scale=0.04, dropout=0.65, input_dropout=0.65, layer_dropout=0.65,
                  sum_over_time=True),
    # The best PTB perplexity we could aim for in 60 minutes of wall time (evaluation included) on a 2-core CPU:
    # a tied (Press & Wolf 2017), variationally regularised (Gal & Ghahramani 2016; embedding dropout and weight
    # drop as in Merity et al. 2017) 2x256 LSTM, SGD at 20 with clip 0.25 (pytorch word_language_model's
    # settings) annealed to 0 by a cosine over the time budget, so the run ends fully annealed.
    "speedrun": dict(hidden_size=256, num_layers=2, num_steps=35, batch_size=20, tie_weights=True,
                     dropout=0.2, input_dropout=0.2, layer_dropout=0.2, variational=True,
                     embedding_dropout=0.05, weight_drop=0.1, optimizer="sgd", learning_rate=20.0,
                     clip_norm=0.25, lr_schedule="cosine", epochs=60, max_minutes=60.0),
}


def preset(name, **overrides):
    """Return the Config of a named preset with `overrides` applied.

    Example:
        >>> preset("small", epochs=1).hidden_size
        200
    """
    if name not in PRESETS:
        raise LstmlmError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return Config(**{**PRESETS[name], **overrides})
