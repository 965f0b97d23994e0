"""Typed configuration: every field has a default in code, a help string, and one full-word name that is
also the CLI flag (`hidden_size` <-> `--hidden-size`), the `config.json` key and the preset key.

The defaults are the recipe `lstmlm train` runs with no flags: Zaremba et al. 2014's "small" PTB model (the
`small` preset is exactly `Config()`); every other preset lists only what differs (presets.py).
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lstmlm.errors import LstmlmError


def _help(text, **extra):
    return {"help": text, **extra}


def parse_cutoffs(text):
    """'2000,10000' (or a list) -> [2000, 10000]; '' -> [] (automatic). Raises LstmlmError naming --cutoffs.

    Example:
        >>> parse_cutoffs("2000, 10000"), parse_cutoffs("")
        ([2000, 10000], [])
    """
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).replace(" ", "").split(",") if t]
    try:
        cutoffs = [int(item) for item in items]
    except (TypeError, ValueError):
        cutoffs = None
    if cutoffs is None or any(c <= 0 for c in cutoffs) or any(a >= b for a, b in zip(cutoffs, cutoffs[1:])):
        raise LstmlmError(f"--cutoffs must be increasing positive integers separated by commas (e.g. 2000,10000), "
                          f"got {text!r}")
    return cutoffs


@dataclass
class Config:
    # ---- data -----------------------------------------------------------------------------------------
    data: str = field(default="ptb", metadata=_help(
        "bundled corpus: 'ptb', or 'ptb-char' (the same text without each line's leading and trailing space, "
        "for --tokenizer char: PTB-char's characters); ignored when --train is given"))
    train: str | None = field(default=None, metadata=_help("training text file (UTF-8, one sentence per line)"))
    valid: str | None = field(default=None, metadata=_help("validation text file"))
    test: str | None = field(default=None, metadata=_help("test text file (optional)"))
    max_vocabulary_size: int = field(default=0, metadata=_help(
        "vocabulary size cap, <unk> included; 0 = every training word (PTB has 10,000 types, WikiText-2 33,278: "
        "the published numbers use them all); --tokenizer char caps characters the same way; byte and bpe, "
        "which have no <unk>, ignore it"))
    lowercase: bool = field(default=False, metadata=_help("lower-case the corpus and prompts"))
    tokenizer: str = field(default="word", metadata=_help(
        "'word': whitespace words (vocab.txt); 'char': Unicode characters of the training split; 'byte': the 256 "
        "UTF-8 bytes; 'bpe': byte-level BPE learned on the training split (Hugging Face tokenizers, "
        "--vocabulary-size); every kind reads a newline as <eos> (data/tokenizers.py)",
        choices=("word", "char", "byte", "bpe")))
    vocabulary_size: int = field(default=0, metadata=_help(
        "--tokenizer bpe: ids to learn, the 256 bytes and <eos> included (0 = 8,000)"))
    # ---- batching -------------------------------------------------------------------------------------
    batching: str = field(default="stream", metadata=_help(
        "'stream': batch_size parallel streams, hidden state carried across batches (truncated BPTT); "
        "'window': the tutorial's generator, stateless windows", choices=("stream", "window")))
    batch_size: int = field(default=20, metadata=_help("sequences per batch"))
    num_steps: int = field(default=20, metadata=_help("time steps per batch (BPTT length)"))
    skip_step: int = field(default=0, metadata=_help("window mode: start offset between windows (0 = num_steps)"))
    # ---- model ----------------------------------------------------------------------------------------
    embedding_size: int = field(default=0, metadata=_help("word vector size (0 = hidden_size)"))
    hidden_size: int = field(default=200, metadata=_help("LSTM units per layer"))
    num_layers: int = field(default=2, metadata=_help("stacked LSTM layers"))
    dropout: float = field(default=0.0, metadata=_help("dropout on the last LSTM output, before the softmax layer"))
    input_dropout: float = field(default=0.0, metadata=_help("dropout on the word vectors"))
    layer_dropout: float = field(default=0.0, metadata=_help("dropout between LSTM layers"))
    variational: bool = field(default=False, metadata=_help(
        "one dropout mask per sequence, shared over time (Gal & Ghahramani 2016)"))
    embedding_dropout: float = field(default=0.0, metadata=_help("drop whole words from the embedding (Gal 2016)"))
    weight_drop: float = field(default=0.0, metadata=_help(
        "DropConnect on the recurrent weights (Merity et al. 2017)"))
    tie_weights: bool = field(default=False, metadata=_help(
        "share the embedding and softmax weights (Press & Wolf 2017); needs embedding_size == hidden_size"))
    softmax: str = field(default="full", metadata=_help(
        "'full': one softmax over the vocabulary; 'adaptive': Grave et al. 2017's adaptive softmax over frequency "
        "clusters, exact probabilities and a much cheaper training step on large vocabularies (with "
        "--tie-weights the input embeddings become adaptive too, Baevski & Auli 2019)", choices=("full", "adaptive")))
    cutoffs: str = field(default="", metadata=_help(
        "adaptive softmax: cluster boundaries as word ids (ids are sorted by descending count), comma-separated: "
        "'2000,10000' = the 2,000 most frequent words in the head, then ids 2,000-9,999, then the rest; "
        "'' = automatic (vocabulary size / 16 and / 3); a JSON config may give a list"))
    init_scale: float = field(default=0.1, metadata=_help("uniform(-s, s) initialisation; 0 = Keras defaults"))
    # ---- training -------------------------------------------------------------------------------------
    epochs: int = field(default=13, metadata=_help("training epochs"))
    optimizer: str = field(default="sgd", metadata=_help("optimizer", choices=("sgd", "adam", "adamw")))
    learning_rate: float = field(default=1.0, metadata=_help("initial learning rate"))
    weight_decay: float = field(default=0.0, metadata=_help("decoupled weight decay (adamw) or L2 (sgd)"))
    clip_norm: float = field(default=5.0, metadata=_help("clip the global gradient norm (0 = off)"))
    sum_over_time: bool = field(default=True, metadata=_help(
        "train on the loss summed over the time steps and averaged over the batch (Zaremba et al. 2014, TF "
        "ptb_word_lm), so learning_rate and clip_norm mean what they mean there; off = mean per token"))
    learning_rate_schedule: str = field(default="decay", metadata=_help(
        "'constant'; 'decay': multiply by learning_rate_decay each epoch after learning_rate_decay_start; "
        "'plateau': multiply by learning_rate_decay when validation loss does not improve; 'cosine': cosine to 0 "
        "per step", choices=("constant", "decay", "plateau", "cosine")))
    learning_rate_decay: float = field(default=0.5, metadata=_help(
        "learning-rate multiplier (decay / plateau schedules)"))
    learning_rate_decay_start: int = field(default=4, metadata=_help("decay schedule: epochs at the initial rate"))
    warmup_steps: int = field(default=0, metadata=_help("linear learning-rate warm-up over this many batches"))
    max_minutes: float = field(default=0.0, metadata=_help(
        "stop after this much wall time, evaluation included (0 = no limit); the cosine schedule spans it"))
    seed: int = field(default=1, metadata=_help("random seed (weights, dropout, sampling)"))
    precision: str = field(default="auto", metadata=_help(
        "'bfloat16' autocast, 'float32', or 'auto' (bfloat16 where the hardware has it)",
        choices=("auto", "float32", "bfloat16")))
    fused: bool = field(default=True, metadata=_help(
        "use the backend's fused LSTM kernel (torch: oneDNN / cuDNN); off = the pure-Keras loop"))
    threads: int = field(default=0, metadata=_help("CPU threads for the backend (0 = its default: all cores)"))
    evaluation_batch_size: int = field(default=1, metadata=_help(
        "parallel streams for validation; 1 carries the state through the whole text (exact)"))
    keep_checkpoints: int = field(default=0, metadata=_help("keep only the newest N epoch checkpoints (0 = all)"))
    checkpoint_minutes: float = field(default=10.0, metadata=_help(
        "also save a resumable mid-epoch checkpoint every this many minutes (0 = only at epoch ends): a killed "
        "run loses at most this much work"))
    max_nonfinite_steps: int = field(default=10, metadata=_help(
        "a step whose loss or gradient is nan/inf is skipped; this many in a row stop training"))
    tensorboard: bool = field(default=False, metadata=_help("also write TensorBoard logs to RUN_DIR/tensorboard"))
    patience: int = field(default=0, metadata=_help(
        "early stopping: stop when validation has not improved for this many epochs (0 = never); the best "
        "model is kept"))

    def __post_init__(self):
        if isinstance(self.cutoffs, (list, tuple)):  # a JSON config's list -> the flag's text form
            self.cutoffs = ",".join(str(c) for c in self.cutoffs)

    def validate(self):
        """Raise LstmlmError naming the first bad field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise LstmlmError(f"--{flag(f.name)} must be a finite number, got {value}")
        positive = ["batch_size", "num_steps", "hidden_size", "num_layers", "epochs", "evaluation_batch_size",
                    "max_nonfinite_steps"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise LstmlmError(f"--{flag(name)} must be a positive integer, got {getattr(self, name)}")
        for name in ["max_vocabulary_size", "threads", "embedding_size", "skip_step", "learning_rate_decay_start",
                     "warmup_steps", "keep_checkpoints", "patience"]:
            if getattr(self, name) < 0:
                raise LstmlmError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ["dropout", "input_dropout", "layer_dropout", "embedding_dropout", "weight_drop"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LstmlmError(f"--{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        for name in ["learning_rate"]:
            if getattr(self, name) <= 0:
                raise LstmlmError(f"--{flag(name)} must be > 0, got {getattr(self, name)}")
        for name in ["clip_norm", "weight_decay", "init_scale", "max_minutes", "checkpoint_minutes"]:
            if getattr(self, name) < 0:
                raise LstmlmError(f"--{flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.learning_rate_decay <= 1.0:
            raise LstmlmError(f"--learning-rate-decay must be in (0, 1], got {self.learning_rate_decay}")
        if self.vocabulary_size and self.tokenizer != "bpe":
            raise LstmlmError(f"--vocabulary-size {self.vocabulary_size}: only --tokenizer bpe learns a vocabulary of "
                              "a chosen size (word and char: --max-vocabulary-size)")
        if self.tokenizer == "bpe" and self.vocabulary_size:
            from lstmlm.data.tokenizers import check_bpe_size

            check_bpe_size(self.vocabulary_size)
        if self.max_vocabulary_size == 1:
            raise LstmlmError("--max-vocabulary-size must be 0 (every word) or at least 2 (a word and <unk>)")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise LstmlmError(f"--{flag(f.name)} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, f.name)!r}")
        if self.tie_weights and self.embedding_size not in (0, self.hidden_size):
            raise LstmlmError("--tie-weights needs --embedding-size equal to --hidden-size")
        parse_cutoffs(self.cutoffs)  # increasing positive integers (checked against the vocabulary in build_model)
        if self.cutoffs and self.softmax != "adaptive":
            raise LstmlmError(f"--cutoffs {self.cutoffs}: only the adaptive softmax has clusters "
                              "(add --softmax adaptive)")
        if (self.valid is None) != (self.train is None):
            raise LstmlmError("--train and --valid must be given together")
        if self.test is not None and self.train is None:
            raise LstmlmError("--test needs --train and --valid")
        return self

    @property
    def word_vector_size(self):
        return self.embedding_size or self.hidden_size

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="config"):
        values = rename_deprecated(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LstmlmError(f"{source}: unknown config key(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# Names a published command or an older run directory's config.json may still use -> today's field name.
DEPRECATED_NAMES = {"max_vocab": "max_vocabulary_size", "lr_schedule": "learning_rate_schedule",
                    "lr_decay": "learning_rate_decay", "lr_decay_start": "learning_rate_decay_start",
                    "eval_batch_size": "evaluation_batch_size"}


def rename_deprecated(values):
    """The same dict with deprecated keys renamed (an old run's config.json still loads and resumes)."""
    return {DEPRECATED_NAMES.get(key, key): value for key, value in values.items()}


def flag(name):
    """The CLI flag of a config field: hidden_size -> hidden-size."""
    return name.replace("_", "-")


def load_config_values(path):
    """The fields set in a JSON config file, checked against Config's field names."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LstmlmError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise LstmlmError(f"{path}: not UTF-8 text (at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise LstmlmError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:  # a folder, no permission
        raise LstmlmError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(values, dict):
        raise LstmlmError(f"{path}: expected a JSON object of config fields")
    values = rename_deprecated(values.get("config", values))
    Config.from_dict(values, source=str(path))  # unknown keys -> one-line error
    return values
