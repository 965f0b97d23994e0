"""From Keras' `model.fit()` to lstmlm's world (docs/keras.md): the `ResetStates` callback for a stateful model
on streams, a `TensorBoard` callback that needs no TensorFlow (Keras' own writes through `tf.summary`, so on
torch and JAX it needs TensorFlow installed), and `save_run`, which writes a fit()-trained model as a run
directory that `lstmlm evaluate`, `predict`, `generate`, `serve` and `export` accept.

`save_run` writes what `run_directory.load_run` reads (and nothing `--resume` would: a fit() run resumes with
Keras' BackupAndRestore): config.json (a Config describing the model, its corpus and its batches), vocab.txt,
model.keras and, given the fit() History, history.csv in `lstmlm train`'s column names. Every file is written
atomically. A stateful model is saved as its stateless twin (same weights): a run's model is always the model
`lstmlm train` writes.
"""

import math
import platform
from pathlib import Path

import keras

import lstmlm
from lstmlm import run_directory as rd
from lstmlm.config import Config
from lstmlm.data.corpus import BUNDLED
from lstmlm.data.vocabulary import Vocabulary
from lstmlm.errors import LstmlmError
from lstmlm.model.lstm_language_model import LSTMLanguageModel

# fit()'s History keys -> history.csv's (lstmlm train's names); other keys are written as Keras names them
HISTORY_NAMES = {"loss": "train_loss", "sparse_categorical_accuracy": "train_accuracy", "val_loss": "valid_loss",
                 "val_sparse_categorical_accuracy": "valid_accuracy", "learning_rate": "learning_rate"}


class ResetStates(keras.callbacks.Callback):
    """Zero a stateful LSTMLanguageModel's carried states at the start of every epoch, validation and prediction:
    each pass over a text starts from a zero state, as `lstmlm train` starts each epoch.

    Example:
        >>> model = LSTMLanguageModel(30, 8, 8, 1, stateful=True)
        >>> model.build((2, None))
        >>> _ = model(keras.ops.ones((2, 3), dtype="int32"))
        >>> callback = ResetStates()
        >>> callback.set_model(model)
        >>> callback.on_epoch_begin(0)
        >>> float(keras.ops.max(keras.ops.abs(model.state_variables[0][1])))
        0.0
    """

    def _reset(self):
        if not getattr(self.model, "stateful", False):
            raise LstmlmError("ResetStates: the model is not stateful (LSTMLanguageModel(..., stateful=True))")
        self.model.reset_states()

    def on_epoch_begin(self, epoch, logs=None):
        self._reset()

    def on_test_begin(self, logs=None):
        self._reset()

    def on_predict_begin(self, logs=None):
        self._reset()


class TensorBoard(keras.callbacks.Callback):
    """Each epoch's logs as TensorBoard scalars under `lstmlm train --tensorboard`'s names (train_loss,
    valid_loss, train_perplexity, ...), written by torch's SummaryWriter (needs the tensorboard package).

    Args:
        log_dir: the log directory (created if missing); view with `tensorboard --logdir LOG_DIR`.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = str(log_dir)

    def on_epoch_end(self, epoch, logs=None):
        from lstmlm.training.tensorboard import write_scalars

        rows = history_rows({key: [value] for key, value in (logs or {}).items()})
        write_scalars(self.log_dir, {**(rows[0] if rows else {}), "epoch": epoch + 1})


def save_run(model, vocabulary, out, train=None, valid=None, test=None, history=None):
    """Write a trained LSTMLanguageModel as a run directory (config.json, vocab.txt, model.keras[, history.csv]).

    Args:
        model: the LSTMLanguageModel (after `fit()`, or any).
        vocabulary: its Vocabulary, or the lstmlm.data dataset it trained on (`windows` / `streams`): then that
            dataset's text, batches and lower-casing are recorded too.
        out: the new run directory (an error if it already holds a run).
        train, valid, test: the corpus's texts (files, bundled splits like 'ptb.valid', or lstmlm.data datasets),
            so that `lstmlm evaluate --split` and `predict --split` find them; `train` defaults to the dataset's.
            Without `valid` the run names no corpus: evaluate and predict then take `--file` / `--text`.
        history: fit()'s History (or its `.history` dict): written as history.csv.
    Returns:
        the run directory's Path.

    Example:
        >>> import tempfile
        >>> from lstmlm.run_directory import load_run
        >>> vocabulary = Vocabulary.build("the cat sat on the mat <eos>".split())
        >>> model = LSTMLanguageModel(len(vocabulary), 8, 8, 1)
        >>> model.build((None, None))
        >>> run = load_run(save_run(model, vocabulary, Path(tempfile.mkdtemp()) / "run"))
        >>> run.model.vocabulary_size, run.config.hidden_size, run.config.precision
        (7, 8, 'float32')
    """
    dataset = vocabulary if hasattr(vocabulary, "batching") else None
    vocabulary = getattr(vocabulary, "vocabulary", vocabulary)
    if not isinstance(model, LSTMLanguageModel):
        raise LstmlmError(f"save_run: model must be an lstmlm LSTMLanguageModel, got {type(model).__name__}")
    if not isinstance(vocabulary, Vocabulary):
        raise LstmlmError(f"save_run: vocabulary must be a Vocabulary or a dataset of lstmlm.data, got "
                          f"{type(vocabulary).__name__}")
    if not model.built:
        raise LstmlmError("save_run: the model has no weights yet: fit() it, or build((None, None)) it, first")
    if model.vocabulary_size != len(vocabulary):
        raise LstmlmError(f"save_run: the model has {model.vocabulary_size} words but the vocabulary "
                          f"{len(vocabulary)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LstmlmError(f"save_run: out {out} exists and is not a directory")
    if (out / rd.CONFIG).exists():
        raise LstmlmError(f"save_run: out {out} already holds a run")
    config = describe(model, dataset, train, valid, test)
    model = stateless(model)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary.save(out / rd.VOCABULARY)
    rd.save_model(model, out / rd.MODEL)
    if history is not None:
        rows = history_rows(getattr(history, "history", history))
        rd.write_history(out / rd.HISTORY, rows, list(dict.fromkeys(key for row in rows for key in row)))
    info = {"format_version": rd.FORMAT_VERSION, "config": config.to_dict(), "command": "lstmlm.save_run (Keras fit())",
            "precision": "float32", "parameters": int(model.count_params()),
            "vocabulary_size": len(vocabulary),
            "versions": {"lstmlm": lstmlm.__version__, "keras": keras.__version__,
                         "backend": keras.backend.backend(), "python": platform.python_version()},
            **({"cutoffs": model.cutoffs} if model.cutoffs else {})}
    rd.write_json(out / rd.CONFIG, info, "run config")  # last: a directory without config.json is no run
    return out


def describe(model, dataset=None, train=None, valid=None, test=None):
    """The Config of a run holding `model`: its architecture, and the corpus and batches where known."""
    texts = {split: getattr(text, "text", text) for split, text in
             (("train", train if train is not None else dataset), ("valid", valid), ("test", test))}
    texts = {split: None if text is None else str(text) for split, text in texts.items()}
    values = dict(hidden_size=model.hidden_size, num_layers=model.num_layers, dropout=model.dropout,
                  input_dropout=model.input_dropout, layer_dropout=model.layer_dropout, variational=model.variational,
                  embedding_dropout=model.embedding_dropout, weight_drop=model.weight_drop,
                  tie_weights=model.tie_weights, init_scale=model.init_scale, fused=model.fused, seed=model.seed,
                  softmax=model.softmax, cutoffs=list(model.cutoffs), precision="float32",
                  embedding_size=0 if model.embedding_size == model.hidden_size else model.embedding_size)
    if dataset is not None:
        values.update(batching=dataset.batching, batch_size=dataset.batch_size, num_steps=dataset.num_steps,
                      lowercase=dataset.lowercase, skip_step=getattr(dataset, "skip_step", 0))
    given = [text for text in texts.values() if text is not None]
    names = {text.partition(".")[0] for text in given if text.partition(".")[0] in BUNDLED and not Path(text).exists()}
    if given and len(names) == 1 and all(text.partition(".")[0] in names for text in given):
        values["data"] = names.pop()  # 'ptb.train', 'ptb.valid', ...: the bundled corpus, all of its splits
    elif texts["valid"] is None:
        values["data"] = ""  # no corpus: --split says so and asks for --file
    elif texts["train"] is None:
        raise LstmlmError("save_run: valid is given without train (the vocabulary's text): give both")
    else:
        values.update(train=texts["train"], valid=texts["valid"], test=texts["test"])
    try:
        return Config(**values).validate()
    except LstmlmError as error:
        raise LstmlmError(f"save_run: {error}") from None


def stateless(model):
    """The model itself, or for a stateful one a stateless LSTMLanguageModel with the same weights."""
    if not model.stateful:
        return model
    twin = LSTMLanguageModel.from_config({**model.get_config(), "stateful": False})
    twin.build((None, None))
    carried = {id(v) for pair in model.state_variables for v in pair}
    for target, source in zip(twin.weights, [w for w in model.weights if id(w) not in carried], strict=True):
        target.assign(source.value)
    return twin


def history_rows(history):
    """fit()'s {key: [value per epoch]} -> history.csv rows, lstmlm train's names (perplexities added)."""
    epochs = max((len(values) for values in history.values()), default=0)
    rows = []
    for epoch in range(epochs):
        row = {"epoch": epoch + 1}
        for key, values in history.items():
            if epoch < len(values):
                row[HISTORY_NAMES.get(key, key)] = float(values[epoch])
        for split in ("train", "valid"):
            if f"{split}_loss" in row:
                row[f"{split}_perplexity"] = math.exp(min(row[f"{split}_loss"], 700.0))
        rows.append(row)
    return rows
