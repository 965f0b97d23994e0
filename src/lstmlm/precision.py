"""The one rule for numeric precision, in training (`train`) and inference (predict, generate, score, evaluate,
serve, `load()`).

1. `--precision` (the API's `precision=`) wins when given: auto, float32, bfloat16 or int8.
2. Otherwise the precision saved in the run's config.json (`precision`, what training was asked for: auto by
   default) is used. int8 is never saved: it is an inference-only choice.
3. `auto` means bfloat16 where the hardware computes in it natively (a CPU with avx512_bf16 or AMX, a CUDA GPU
   with bf16), else float32 -- the same meaning as in training.
4. bfloat16 is used only where the hardware has it: asked for on the command line elsewhere, it is an error;
   saved in a run trained elsewhere (a GPU), it falls back to float32.
5. bfloat16 and int8 need the torch backend; on other Keras backends only float32 runs.

float32 is the exact reference: the trained weights as they are. bfloat16 stores the LSTM and softmax weights in
bfloat16 and runs their products in it, keeping the LSTM state and the elementwise cell in float32
(step_model.py); int8 stores the LSTM and softmax weights in int8 (see quantization.py). Both are approximations
whose cost in perplexity is measured in docs/benchmarks.md.
"""

from lstmlm import torch_backend
from lstmlm.errors import LstmlmError

PRECISIONS = ("auto", "float32", "bfloat16", "int8")
NO_BFLOAT16 = ("precision bfloat16: this machine has no native bfloat16 (needs a CPU with avx512_bf16/AMX or a "
               "CUDA GPU with bf16, and the torch backend); use auto, float32 or, for inference, int8")
# Optimizers that divide each parameter's step by its own running gradient size (see training_lstm_precision).
ADAPTIVE_OPTIMIZERS = ("adam", "adamw")


def resolve_precision(precision):
    """'auto' -> 'bfloat16' where the hardware computes in it natively, else 'float32'; others unchanged.

    Example:
        >>> resolve_precision("float32")
        'float32'
    """
    if precision == "auto":
        return "bfloat16" if torch_backend.bfloat16_supported() else "float32"
    return precision


def training_precision(requested):
    """The precision training runs in: `requested` (the config's `precision`) resolved; bfloat16 where the
    hardware lacks it is an error (rule 4: training asks for it on the command line or in a config)."""
    choice = resolve_precision(requested)
    if choice == "bfloat16" and not torch_backend.bfloat16_supported():
        raise LstmlmError(NO_BFLOAT16, argument="precision")
    return choice


def inference_precision(requested=None, saved="auto"):
    """The precision inference runs in, by the rule above.

    Args:
        requested: the --precision flag / `precision=` argument, or None.
        saved: the run's config `precision` (auto, float32 or bfloat16).
    Returns:
        'float32', 'bfloat16' or 'int8'.

    Example:
        >>> inference_precision("int8", saved="bfloat16")
        'int8'
        >>> inference_precision(None, saved="float32")
        'float32'
    """
    if requested is not None and requested not in PRECISIONS:
        raise LstmlmError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}", argument="precision")
    choice = resolve_precision(requested or saved or "auto")
    if choice == "bfloat16" and not torch_backend.bfloat16_supported():
        if requested is None:
            return "float32"  # trained in bfloat16 on other hardware; this machine has no bfloat16 kernels
        raise LstmlmError(NO_BFLOAT16, argument="precision")
    if choice == "int8" and not torch_backend.is_torch():
        raise LstmlmError("precision int8 needs the torch backend (KERAS_BACKEND=torch)", argument="precision")
    return choice


def training_lstm_precision(precision, optimizer):
    """The precision of the fused LSTM in a training step that runs in `precision`.

    bfloat16 training runs the embedding, the softmax layer and the loss in bfloat16; the LSTM too with SGD, but
    in float32 with an adaptive optimizer (Adam, AdamW): oneDNN's bfloat16 LSTM rounds a saturated gate's
    derivative to exactly 0, and Adam turns the tiny true gradients it loses into full-size steps
    (torch_backend.float32_lstm; issue 23). With SGD the bfloat16 LSTM trains within rounding of float32
    (tests/test_training.py, docs/runs/bfloat16-training.md) and runs ~20% faster.

    Example:
        >>> training_lstm_precision("bfloat16", "adam"), training_lstm_precision("bfloat16", "sgd")
        ('float32', 'bfloat16')
    """
    if precision == "bfloat16" and optimizer in ADAPTIVE_OPTIMIZERS:
        return "float32"
    return precision


def add_precision_argument(parser):
    """--precision for the verbs that run a trained model (the CLI's and `lstmlm serve`'s; the rule is above)."""
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="auto (bfloat16 where the CPU/GPU has it, else float32), float32 (exact), bfloat16 or "
                             "int8; default: the precision saved in the run")
