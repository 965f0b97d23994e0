"""`lstmlm plot RUN_DIR`: training curves from history.csv as PNG files.

    loss.png            train and valid cross-entropy per epoch (nats per word)
    perplexity.png      train and valid perplexity per epoch (log scale: perplexity is exp(loss))
    accuracy.png        train and valid next-word accuracy, and valid top-5 accuracy
    learning_rate.png   the learning rate each epoch trained with
    throughput.png      training speed (tokens per second)

matplotlib is imported inside the functions (Agg backend, no display needed), so `lstmlm --help` stays fast
and the package works without it; it is the `plot` extra: `pip install lstmlm[plot]`.
"""

from pathlib import Path

from lstmlm.errors import LstmlmError
from lstmlm.run_directory import HISTORY, read_history

# file name -> (title, y label, [(history field, legend label)], log y)
FIGURES = {
    "loss.png": ("Cross-entropy loss per epoch", "loss (nats per word)",
                 [("train_loss", "train"), ("valid_loss", "valid")], False),
    "perplexity.png": ("Perplexity per epoch", "perplexity (log scale)",
                       [("train_perplexity", "train"), ("valid_perplexity", "valid")], True),
    "accuracy.png": ("Next-word accuracy per epoch", "accuracy (fraction of words)",
                     [("train_accuracy", "train"), ("valid_accuracy", "valid"),
                      ("valid_top5_accuracy", "valid top-5")], False),
    "learning_rate.png": ("Learning rate per epoch", "learning rate", [("learning_rate", "learning rate")], False),
    "throughput.png": ("Training speed per epoch", "tokens per second", [("tokens_per_second", "train")], False),
    # the two numbers that compare across tokenizers (metrics.comparable); empty for a run from before them
    "bits_per_character.png": ("Validation bits per character", "bits per character",
                               [("valid_bits_per_character", "valid")], False),
    "word_perplexity.png": ("Validation word perplexity", "perplexity per whitespace word (log scale)",
                            [("valid_word_perplexity", "valid")], True),
}


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise LstmlmError("plotting needs matplotlib: pip install 'lstmlm[plot]'") from None
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_history(run_dir, out=None):
    """Write the training curves of a run directory as PNG files.

    Args:
        run_dir: a run directory with a history.csv (one row per finished epoch).
        out: folder for the PNGs (created); default RUN_DIR/plots.
    Returns:
        the paths written, in FIGURES order.

    Example:
        >>> plot_history("runs/ptb-small")            # doctest: +SKIP
        [PosixPath('runs/ptb-small/plots/loss.png'), PosixPath('runs/ptb-small/plots/perplexity.png'), ...]
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LstmlmError(f"{run_dir}: no such run directory")
    rows = [row for row in read_history(run_dir / HISTORY) if isinstance(row.get("epoch"), int)]
    if not rows:
        raise LstmlmError(f"{run_dir}: no {HISTORY} rows to plot (has training finished an epoch?)")
    plt = import_pyplot()
    from matplotlib import ticker

    out = Path(out) if out is not None else run_dir / "plots"
    if out.exists() and not out.is_dir():
        raise LstmlmError(f"--out {out}: exists and is not a folder")
    epochs = [row["epoch"] for row in rows]
    paths = []
    for name, (title, y_label, series, log_y) in FIGURES.items():
        figure, axes = plt.subplots(figsize=(7, 4.5), dpi=100)
        for field, label in series:
            values = [row.get(field) for row in rows]
            if all(isinstance(v, (int, float)) for v in values):  # a column missing from an old run: skip it
                axes.plot(epochs, values, marker="o", label=label)
        if log_y:
            axes.set_yscale("log")
            # plain numbers (120, not 1.2 x 10^2), also on the minor ticks a short range of perplexities gets
            axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            axes.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        axes.set_title(f"{title} ({run_dir.name})")
        axes.set_xlabel("epoch")
        axes.set_ylabel(y_label)
        axes.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        axes.grid(True, which="both", alpha=0.3)
        if len(series) > 1:
            axes.legend()
        figure.tight_layout()
        paths.append(save_figure(figure, out / name))
    return paths


def save_figure(figure, path):
    """Write a matplotlib figure (and close it), its folder created; a path that cannot be written or has an
    extension matplotlib has no writer for is one LstmlmError."""
    plt = import_pyplot()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    except OSError as error:
        raise LstmlmError(f"{path}: cannot write ({error.strerror or error})") from None
    except ValueError as error:  # e.g. "Format 'txt' is not supported"
        raise LstmlmError(f"{path}: cannot write the figure ({str(error).splitlines()[0]})") from None
    finally:
        plt.close(figure)
    return path


def add_parser(subparsers):
    parser = subparsers.add_parser("plot", help="training curves (loss, perplexity, learning rate) as PNGs",
                                   description="Plot a run's history.csv: loss and perplexity (train vs valid), "
                                               "accuracy, learning rate and tokens/s per epoch.")
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots)")
    parser.set_defaults(handler=run_plot)


def run_plot(args):
    for path in plot_history(args.run_dir, args.out):
        print(path)
    return 0
