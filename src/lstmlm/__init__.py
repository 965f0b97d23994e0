"""lstmlm: word-level LSTM language models in Keras 3 (PyTorch backend by default)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

from lstmlm.config import Config  # noqa: E402
from lstmlm.errors import LstmlmError  # noqa: E402
from lstmlm.lstm import LSTM  # noqa: E402
from lstmlm.model import LSTMLanguageModel, build_model  # noqa: E402
from lstmlm.presets import PRESETS, preset  # noqa: E402
from lstmlm.vocabulary import Vocabulary  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Config", "LstmlmError", "LSTM", "LSTMLanguageModel", "build_model", "PRESETS", "preset", "Vocabulary"]
