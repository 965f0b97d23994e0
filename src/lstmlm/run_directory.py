"""The run directory: everything evaluate / predict / generate / serve need, and nothing they must not trust.

    RUN_DIR/
      config.json            the Config, the command line, versions, device, precision
      vocab.txt              word<TAB>count in id order
      model.keras            the best-validation model (keras.saving.load_model after `import lstmlm`)
      history.csv            one row per epoch (see training.HISTORY_FIELDS)
      state.json             where training stands (for --resume)
      checkpoints/model-NN.keras every epoch; optimizer-NN.npz (and states-*.npz after Ctrl-C) for --resume

Every file is written through lstmlm.files.atomic_path (a temporary name, then a rename), so an interrupted write never leaves a
half-written file where a good one was. No pickle anywhere: JSON, text, .keras (zip of JSON + HDF5) and .npz.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from lstmlm.config import Config
from lstmlm.errors import LstmlmError
from lstmlm.files import atomic_path, atomic_write_text
from lstmlm.vocabulary import Vocabulary

CONFIG = "config.json"
VOCABULARY = "vocab.txt"
MODEL = "model.keras"
HISTORY = "history.csv"
STATE = "state.json"
CHECKPOINTS = "checkpoints"


def write_json(path, values, what="file"):
    atomic_write_text(path, json.dumps(values, indent=2) + "\n", what)


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LstmlmError(f"{path}: not valid JSON ({error})") from None


def save_model(model, path, what="model"):
    with atomic_path(path, what) as temporary:
        model.save(temporary)


def save_arrays(path, arrays, what="arrays"):
    with atomic_path(path, what) as temporary:
        np.savez(temporary, **arrays)


def load_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_history(path, rows, fields):
    with atomic_path(path, "history") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def read_history(path):
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)]


def _number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def load_keras_model(path):
    import lstmlm  # noqa: F401  (registers the custom classes)

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (OSError, ValueError, KeyError) as error:
        raise LstmlmError(f"{path}: cannot load the model ({str(error).splitlines()[0][:200]})") from None


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: Config
    vocabulary: Vocabulary
    model: object
    history: list
    info: dict  # the rest of config.json (command, versions, precision)


def check_run_directory(path, need_model=True):
    path = Path(path)
    if not path.exists():
        raise LstmlmError(f"{path}: no such run directory")
    if not path.is_dir():
        raise LstmlmError(f"{path}: not a directory")
    needed = [CONFIG, VOCABULARY] + ([MODEL] if need_model else [])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise LstmlmError(f"{path}: incomplete run directory, missing {', '.join(missing)}"
                          + (" (has training finished an epoch?)" if MODEL in missing else ""))
    return path


def load_run(path, model_file=MODEL):
    """Load config, vocabulary, model and history from a run directory.

    Example:
        >>> run = load_run("runs/small")          # doctest: +SKIP
        >>> run.model.vocabulary_size == len(run.vocabulary)   # doctest: +SKIP
        True
    """
    path = check_run_directory(path)
    info = read_json(path / CONFIG)
    config = Config.from_dict(info.get("config", {}), source=str(path / CONFIG))
    vocabulary = Vocabulary.load(path / VOCABULARY)
    model_path = path / model_file
    if not model_path.is_file():
        raise LstmlmError(f"{model_path}: no such model file")
    model = load_keras_model(model_path)
    if model.vocabulary_size != len(vocabulary):
        raise LstmlmError(f"{path}: model has {model.vocabulary_size} words but vocab.txt has {len(vocabulary)}")
    return Run(path, config, vocabulary, model, read_history(path / HISTORY), info)
