"""The run directory: everything evaluate / predict / generate / serve need, and nothing they must not trust.
This is the one description of its layout (the README and training/checkpoints.py point here).

    RUN_DIR/
      config.json                    the Config, the command line, versions, device, precision
      vocab.txt                      word<TAB>count in id order (the word tokenizer's file)
      characters.json | bytes.json | tokenizer.json
                                     instead of vocab.txt, the char / byte / bpe tokenizer (config.json's
                                     `tokenizer`; absent = word): data/tokenizers.py describes each file;
                                     tokenizer.json is Hugging Face tokenizers' own format
      model.keras                    the best-validation model (keras.saving.load_model after `import lstmlm`)
      history.csv                    one row per finished epoch (training/epoch.py: HISTORY_FIELDS)
      state.json                     where training stands (for --resume): names the checkpoint, optimizer
                                     and states files below, and is written last, after all of them
      checkpoints/model-NN.keras     the model after epoch NN (every epoch; --keep-checkpoints N keeps the newest N)
      checkpoints/interrupted.keras  the resumable mid-epoch checkpoint (Ctrl-C, SIGTERM, SIGHUP, and every
                                     --checkpoint-minutes); the next one goes to interrupted-1.keras, then back:
                                     a file state.json names is never overwritten
      checkpoints/optimizer-TAG.npz  the optimizer state belonging to model-TAG / TAG.keras
      checkpoints/states-TAG.npz     the LSTM states of a mid-epoch checkpoint (stream batching)
      tensorboard/                   TensorBoard scalars, with --tensorboard

Every file is written through lstmlm.files.atomic_path (a temporary name, then a rename), so an interrupted write never leaves a
half-written file where a good one was. No pickle anywhere: JSON, text, .keras (zip of JSON + HDF5) and .npz.

Reading trusts nothing: a damaged, hand-edited or newer-format file is one LstmlmError naming the file and the
problem, raised before anything is written. config.json's `format_version` (absent = 1, the format written
before it existed) says which layout wrote the directory; a version above FORMAT_VERSION is refused.
"""

import csv
import dataclasses
import io
import json
import re
import typing
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import keras
import numpy as np

from lstmlm.config import Config
from lstmlm.errors import LstmlmError
from lstmlm.files import atomic_path, atomic_write_text
from lstmlm.data.tokenizers import load_tokenizer, tokenizer_file
from lstmlm.data.vocabulary import Vocabulary

CONFIG = "config.json"
VOCABULARY = "vocab.txt"
MODEL = "model.keras"
HISTORY = "history.csv"
STATE = "state.json"
CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1  # the run-directory layout this lstmlm writes; it reads this version and every older one


def write_json(path, values, what="file"):
    atomic_write_text(path, json.dumps(values, indent=2) + "\n", what)


def read_json(path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LstmlmError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise LstmlmError(f"{path}: not UTF-8 text (at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise LstmlmError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None


def _read_json_object(path):
    values = read_json(path)
    if not isinstance(values, dict):
        raise LstmlmError(f"{path}: expected a JSON object, found {type(values).__name__}")
    return values


def save_model(model, path, what="model"):
    with atomic_path(path, what) as temporary:
        model.save(temporary)


def save_arrays(path, arrays, what="arrays"):
    with atomic_path(path, what) as temporary:
        np.savez(temporary, **arrays)


def load_arrays(path):
    """{name: array} of an .npz file; missing, damaged or pickled content is one LstmlmError."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise LstmlmError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise LstmlmError(f"{path}: damaged array file ({_first_line(error)})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise LstmlmError(f"{path}: damaged array file (a single .npy array, expected an .npz archive)")
    with data:
        try:
            return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            raise LstmlmError(f"{path}: damaged array file ({_first_line(error)})") from None


def _first_line(error):
    text = str(error).strip()
    return (text.splitlines()[0][:200] if text else type(error).__name__)


def write_history(path, rows, fields):
    with atomic_path(path, "history") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def read_history(path):
    """The rows of history.csv as dicts of numbers (strings where a value is not a number); [] if it is absent.

    A damaged file (not UTF-8, no header, a row whose field count differs from the header's, an epoch that is
    not a whole number) is one LstmlmError naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise LstmlmError(f"{path}: line {line}: bytes that are not UTF-8 (at byte {error.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header or not all(header) or len(set(header)) != len(header):
            raise LstmlmError(f"{path}: line 1: expected a header of distinct column names, found {header!r}")
        rows = []
        for values in reader:
            if not values:
                continue  # a blank line
            if len(values) != len(header):
                raise LstmlmError(f"{path}: line {reader.line_num}: {len(values)} fields, the header has "
                                  f"{len(header)}")
            row = {key: _number(value) for key, value in zip(header, values)}
            if "epoch" in row and not isinstance(row["epoch"], int):
                raise LstmlmError(f"{path}: line {reader.line_num}: epoch {row['epoch']!r} is not a whole number")
            rows.append(row)
    except csv.Error as error:
        raise LstmlmError(f"{path}: line {reader.line_num}: not valid CSV ({error})") from None
    return rows


def _number(text):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def load_keras_model(path):
    """The LSTMLanguageModel in a .keras file, loaded in safe mode (no code from the file is ever run).

    A missing file, a damaged archive (truncated, zeroed, a failed CRC, a member missing), a class this lstmlm
    does not know, content safe mode refuses, or a model that is not an LSTMLanguageModel is one LstmlmError.
    """
    import lstmlm  # noqa: F401  (registers the custom classes)
    from lstmlm.model.lstm_language_model import LSTMLanguageModel

    path = Path(path)
    _check_keras_archive(path)
    with warnings.catch_warnings(record=True) as caught:  # Keras warns (rather than fails) on some bad configs
        warnings.simplefilter("always")
        try:
            model = keras.saving.load_model(path, safe_mode=True)
        except Exception as error:  # noqa: BLE001  (an untrusted file can make Keras raise anything)
            raise LstmlmError(f"{path}: {_load_problem(error)}") from None
    if not isinstance(model, LSTMLanguageModel):
        raise LstmlmError(f"{path}: holds a {type(model).__name__}, not an lstmlm LSTMLanguageModel")
    if not (model.built and all(layer.built for layer in model.layers)):  # embedding, LSTMs, the softmax layer
        reason = next((_first_line(w.message) for w in caught), "its config does not build")
        raise LstmlmError(f"{path}: the model file is damaged ({reason})")
    for warning in caught:  # a model that loaded: pass Keras' warnings on as they were
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model


def _check_keras_archive(path):
    """A .keras file is a zip of config.json, metadata.json and the weights; check it before Keras reads it."""
    if not path.exists():
        raise LstmlmError(f"{path}: no such model file")
    if not path.is_file():
        raise LstmlmError(f"{path}: not a file, expected a .keras model")
    try:
        if path.stat().st_size == 0:
            raise LstmlmError(f"{path}: the model file is damaged (empty)")
        if not zipfile.is_zipfile(path):
            raise LstmlmError(f"{path}: the model file is damaged (not a .keras zip archive: truncated or "
                              "overwritten?)")
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in ("config.json", "metadata.json") if name not in names]
            if not names & {"model.weights.h5", "model.weights.npz"}:
                missing.append("model.weights.h5")
            if missing:
                raise LstmlmError(f"{path}: the model file is damaged (the archive has no {', '.join(missing)})")
            failed = archive.testzip()  # reads every member and checks its CRC-32
            if failed is not None:
                raise LstmlmError(f"{path}: the model file is damaged ({failed} fails its CRC check)")
            json.loads(archive.read("config.json").decode("utf-8"))
    except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError) as error:  # ValueError: JSON, UTF-8
        raise LstmlmError(f"{path}: the model file is damaged ({_first_line(error)})") from None
    except OSError as error:
        raise LstmlmError(f"{path}: cannot read ({error.strerror or _first_line(error)})") from None


def _load_problem(error):
    """What Keras' exception means, in one line."""
    text = _first_line(error)
    unknown = re.search(r"Could not locate (class|function) '([^']*)'", str(error))
    if unknown:
        return (f"names a {unknown[1]} this lstmlm does not know ({unknown[2]!r}): only Keras and lstmlm "
                "classes are loaded (safe mode)")
    if "safe_mode" in str(error) or "arbitrary code" in str(error):
        return f"refused in safe mode: it holds Python code ({text.split('. ')[0].rstrip('.')[:160]})"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if text.endswith(":") and len(lines) > 1:  # Keras' "A total of N objects could not be loaded. ...:" + detail
        text = f"{text} {lines[1][:200]}"
    return f"the model file is damaged or not an lstmlm model ({type(error).__name__}: {text})"


@dataclass
class RunDirectory:
    """A loaded run directory."""

    path: Path
    config: Config
    vocabulary: Vocabulary
    model: object
    history: list
    info: dict  # the rest of config.json (command, versions, precision)
    tokenizer: object = None  # data/tokenizers.py; None: a word run's, made from `vocabulary` where needed


def check_run_directory(path, need_model=True):
    path = Path(path)
    if not path.exists():
        raise LstmlmError(f"{path}: no such run directory")
    if not path.is_dir():
        raise LstmlmError(f"{path}: not a directory")
    needed = [CONFIG, _tokenizer_file(path)] + ([MODEL] if need_model else [])
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise LstmlmError(f"{path}: incomplete run directory, missing {', '.join(missing)}"
                          + (" (has training finished an epoch?)" if MODEL in missing else ""))
    return path


def _tokenizer_file(path):
    """The tokenizer file config.json names (vocab.txt if it names none, or cannot be read: read_config says why)."""
    try:
        kind = json.loads((path / CONFIG).read_text(encoding="utf-8"))["config"].get("tokenizer", "word")
        return tokenizer_file(kind)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return VOCABULARY


def check_format_version(info, source):
    """The run-directory format of a config.json's values (absent = 1); a newer one is an LstmlmError.

    Example:
        >>> check_format_version({}, "config.json"), check_format_version({"format_version": 1}, "config.json")
        (1, 1)
        >>> check_format_version({"format_version": 99}, "run/config.json")
        Traceback (most recent call last):
        lstmlm.errors.LstmlmError: run/config.json: written by a newer lstmlm (format 99, this lstmlm reads up to 1)
    """
    version = info.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LstmlmError(f"{source}: format_version must be a positive whole number, got {version!r}")
    if version > FORMAT_VERSION:
        raise LstmlmError(f"{source}: written by a newer lstmlm (format {version}, this lstmlm reads up to "
                          f"{FORMAT_VERSION})")
    return version


def read_config(run_dir):
    """(config.json's values, the Config in it), checked: a JSON object of a known format, every field of the
    right type and valid."""
    path = Path(run_dir) / CONFIG
    info = _read_json_object(path)
    check_format_version(info, path)
    values = info.get("config")
    if not isinstance(values, dict):
        raise LstmlmError(f"{path}: expected a \"config\" object of config fields")
    config = Config.from_dict(values, source=str(path))
    _check_field_types(config, path)
    try:
        config.validate()
    except LstmlmError as error:
        raise LstmlmError(f"{path}: {error}") from None
    return info, config


def _check_field_types(config, source):
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(config):
        value, kinds = getattr(config, field.name), typing.get_args(hints[field.name]) or (hints[field.name],)
        accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,), type(None): (type(None),)}
        ok = any(isinstance(value, accepted.get(kind, (kind,))) for kind in kinds)
        if isinstance(value, bool) and bool not in kinds:
            ok = False  # JSON true is not a number
        if not ok:
            expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
            raise LstmlmError(f"{source}: config field {field.name} must be {expected}, got {value!r}")


def epoch_model_file(epoch):
    """The checkpoint training writes after `epoch`, relative to the run directory: checkpoints/model-NN.keras."""
    return f"{CHECKPOINTS}/model-{epoch:02d}.keras"


def load_run(path, model_file=MODEL):
    """Load config, vocabulary, model and history from a run directory.

    Example:
        >>> run = load_run("runs/small")          # doctest: +SKIP
        >>> run.model.vocabulary_size == len(run.vocabulary)   # doctest: +SKIP
        True
    """
    path = check_run_directory(path)
    info, config = read_config(path)
    tokenizer = load_tokenizer(path, config)
    vocabulary = tokenizer.vocabulary
    model_path = path / model_file
    if not model_path.is_file():
        raise LstmlmError(f"{model_path}: no such model file")
    model = load_keras_model(model_path)
    if model.vocabulary_size != len(vocabulary):
        raise LstmlmError(f"{path}: model has {model.vocabulary_size} words but "
                          f"{tokenizer_file(config.tokenizer)} has {len(vocabulary)}")
    return RunDirectory(path, config, vocabulary, model, read_history(path / HISTORY), info, tokenizer)


# ---- state.json: where an interrupted or finished training run stands, for --resume ---------------------

# key -> (accepted JSON types, what it holds); other keys are allowed (a later lstmlm may add some)
STATE_KEYS = {
    "epoch": ((int,), "the last finished epoch"),
    "batch": ((int,), "batches done in the next epoch (0 = at an epoch boundary)"),
    "checkpoint": ((str,), "the model to continue from, relative to the run directory"),
    "optimizer": ((str,), "the optimizer state (.npz), relative to the run directory"),
    "states": ((str, type(None)), "the LSTM states of an interrupted epoch (.npz), or null"),
    "best_valid_loss": ((int, float), "the best validation loss so far"),
    "wall_seconds": ((int, float), "training time so far"),
    "optimizer_groups": ((list,), "the optimizer's parameter groups"),
    "window_position": ((int,), "window batching: the generator's position"),
    "partial_sums": ((dict, type(None)), "the interrupted epoch's loss / hits / tokens so far, or null"),
}


@dataclass
class SavedState:
    """A checked state.json with the files it names, loaded (read_state)."""

    values: dict  # state.json as written
    info: dict  # config.json's values
    config: Config
    model: object  # the checkpoint named by "checkpoint"
    optimizer: dict  # {name: array} of the optimizer file
    states: dict | None  # {"h0", "c0", ...: array} of the states file, or None


def read_state(run_dir):
    """Check a run directory's state.json and load every file it names; None if there is no state.json
    (a run stopped before its first checkpoint: start it over from config.json).

    Checks config.json (format version, fields), state.json's keys and their types, that each file it names
    lies inside the run directory, exists and loads (the checkpoint as an LSTMLanguageModel with vocab.txt's
    size, the optimizer and states as .npz of the expected names), and that history.csv has the epochs it
    says are done. Any problem is one LstmlmError naming the file; nothing is written.

    Example:
        >>> saved = read_state("runs/small")                   # doctest: +SKIP
        >>> saved.values["epoch"], saved.model.vocabulary_size  # doctest: +SKIP
        (4, 10000)
    """
    run_dir = check_run_directory(run_dir, need_model=False)
    info, config = read_config(run_dir)
    path = run_dir / STATE
    if not path.exists():
        return None
    values = _read_json_object(path)
    for key, (kinds, meaning) in STATE_KEYS.items():
        if key not in values:
            raise LstmlmError(f"{path}: missing {key!r} ({meaning})")
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, kinds):
            expected = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
            raise LstmlmError(f"{path}: {key!r} must be {expected}, got {value!r}")
    for key in ("epoch", "batch", "window_position"):
        if values[key] < 0:
            raise LstmlmError(f"{path}: {key!r} must be >= 0, got {values[key]}")
    if values["batch"] > 0 and values["partial_sums"] is None:
        raise LstmlmError(f"{path}: batch {values['batch']} of an epoch is done but 'partial_sums' is null")
    if values["batch"] > 0 and config.batching == "stream" and values["states"] is None:
        raise LstmlmError(f"{path}: batch {values['batch']} of an epoch is done but 'states' is null "
                          "(stream batching carries the LSTM states)")
    vocabulary = load_tokenizer(run_dir, config).vocabulary
    model = load_keras_model(_named_file(run_dir, values, "checkpoint", "the checkpoint"))
    if model.vocabulary_size != len(vocabulary):
        raise LstmlmError(f"{run_dir / values['checkpoint']}: model has {model.vocabulary_size} words but "
                          f"{tokenizer_file(config.tokenizer)} has {len(vocabulary)}")
    optimizer = load_arrays(_named_file(run_dir, values, "optimizer", "the optimizer state"))
    bad = [name for name in optimizer if not re.fullmatch(r"\d+\..+", name)]
    if bad:
        raise LstmlmError(f"{run_dir / values['optimizer']}: not an optimizer state (array {bad[0]!r})")
    states = None
    if values["states"] is not None:
        states = load_arrays(_named_file(run_dir, values, "states", "the LSTM states"))
        expected = {f"{kind}{i}" for i in range(config.num_layers) for kind in "hc"}
        if set(states) != expected:
            raise LstmlmError(f"{run_dir / values['states']}: expected the arrays {', '.join(sorted(expected))} "
                              f"of {config.num_layers} layers, found {', '.join(sorted(states)) or 'none'}")
    history = read_history(run_dir / HISTORY)
    if len(history) < values["epoch"]:
        raise LstmlmError(f"{run_dir / HISTORY}: {len(history)} rows, but {STATE} says {values['epoch']} "
                          "epochs are done")
    return SavedState(values, info, config, model, optimizer, states)


def _named_file(run_dir, values, key, meaning):
    """The path state.json names under `key`: relative, inside the run directory, an existing file."""
    name = values[key]
    parts = PurePosixPath(name).parts
    if not name or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise LstmlmError(f"{run_dir / STATE}: {key!r} must be a path inside the run directory, got {name!r}")
    path = run_dir / name
    if not path.is_file():
        raise LstmlmError(f"{path}: named in {STATE} as {meaning} but missing")
    return path
