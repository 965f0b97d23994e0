"""lstmlm: word-level LSTM language models in Keras 3 (PyTorch backend by default).

    import lstmlm
    run_dir = lstmlm.train(lstmlm.preset("small"), out="runs/small")
    model = lstmlm.load(run_dir)
    model.predict_next("the stock market", top_k=5)

`import lstmlm` registers the Keras classes (LSTMLanguageModel, LSTM), so `keras.saving.load_model` can read
a run's `.keras` files in safe mode; the other names are imported on first use.
"""

import importlib
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

__version__ = "0.1.0"

from lstmlm.model.lstm import LSTM  # noqa: E402  (registers lstmlm>LSTM)
from lstmlm.model.lstm_language_model import LSTMLanguageModel, build_model  # noqa: E402  (registers lstmlm>LSTMLanguageModel)

_EXPORTS = {
    "Config": "lstmlm.config", "LstmlmError": "lstmlm.errors", "PRESETS": "lstmlm.presets",
    "preset": "lstmlm.presets", "Vocabulary": "lstmlm.data.vocabulary", "train": "lstmlm.training.loop",
    "load": "lstmlm.inference.language_model", "LanguageModel": "lstmlm.inference.language_model",
    "evaluate_ids": "lstmlm.inference.evaluate", "load_run": "lstmlm.run_directory",
    "save_run": "lstmlm.keras_fit", "ResetStates": "lstmlm.keras_fit",
}
__all__ = sorted([*_EXPORTS, "LSTM", "LSTMLanguageModel", "build_model"])


def __getattr__(name):
    if name == "data":  # lstmlm.data.windows / streams without importing lstmlm.data first
        return importlib.import_module("lstmlm.data")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lstmlm' has no attribute {name!r}")
