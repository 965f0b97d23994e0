"""`lstmlm plot` (training curves as PNG) and the TensorBoard scalars, on a tiny trained run."""

import shutil
import sys

import pytest
from helpers import png_size, tensorboard_installed

from lstmlm.cli import main
from lstmlm.errors import LstmlmError

pytest.importorskip("matplotlib")
from lstmlm.analysis.plots import FIGURES, plot_history  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run (3 epochs, with TensorBoard logs when the package is there); read-only."""
    return tiny_run


def test_plot_history_writes_one_png_per_figure(run_dir, tmp_path):
    paths = plot_history(run_dir, tmp_path / "out")
    assert [p.name for p in paths] == list(FIGURES) == ["loss.png", "perplexity.png", "accuracy.png",
                                                         "learning_rate.png", "throughput.png",
                                                         "bits_per_character.png", "word_perplexity.png"]
    for path in paths:
        assert path.parent == tmp_path / "out"
        assert png_size(path) == (700, 450)  # figsize (7, 4.5) at 100 dpi
        assert path.stat().st_size > 10_000  # lines, labels and titles, not an empty canvas


def test_plot_command_defaults_to_run_plots_folder(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"  # the command writes into the run directory: a copy of the shared one
    shutil.copytree(run_dir, copy)
    assert main(["plot", str(copy)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(copy / "plots" / name) for name in FIGURES]
    assert png_size(copy / "plots" / "loss.png") == (700, 450)


def test_plot_without_history_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(LstmlmError, match="no history.csv rows"):
        plot_history(tmp_path)
    assert main(["plot", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("lstmlm: error: ") and "no such run directory" in error


def read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.skipif(not tensorboard_installed(), reason="needs lstmlm[tensorboard]")
def test_write_scalars_round_trip(tmp_path):
    from lstmlm.training.tensorboard import close, write_scalars

    rows = [{"epoch": 1, "train_loss": 5.25, "valid_perplexity": 180.5, "train_tokens": 1000, "note": "x"},
            {"epoch": 2, "train_loss": 4.75, "valid_perplexity": 150.25, "train_tokens": 2000, "note": "y"}]
    assert write_scalars(tmp_path, rows[0]) == ["train_loss", "valid_perplexity", "train_tokens"]
    write_scalars(tmp_path, rows[1])
    close(tmp_path)
    scalars = read_scalars(tmp_path)
    assert sorted(scalars) == ["train_loss", "train_tokens", "valid_perplexity"]
    assert scalars["train_loss"] == [(1, 5.25), (2, 4.75)]  # exactly representable in float32
    assert scalars["valid_perplexity"] == [(1, 180.5), (2, 150.25)]
    assert scalars["train_tokens"] == [(1, 1000.0), (2, 2000.0)]


@pytest.mark.skipif(not tensorboard_installed(), reason="needs lstmlm[tensorboard]")
def test_training_with_tensorboard_logs_the_history(run_dir):
    from lstmlm.run_directory import read_history
    from lstmlm.training.epoch import HISTORY_FIELDS

    scalars = read_scalars(run_dir / "tensorboard")
    history = read_history(run_dir / "history.csv")
    assert len(history) == 3
    assert sorted(scalars) == sorted(HISTORY_FIELDS[1:])
    for field in HISTORY_FIELDS[1:]:
        assert [step for step, _ in scalars[field]] == [1, 2, 3]
        for (_, value), row in zip(scalars[field], history):
            assert value == pytest.approx(row[field], rel=1e-6)  # stored as float32


def test_missing_tensorboard_package_is_a_clear_error(tmp_path, monkeypatch):
    from lstmlm.training import tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    monkeypatch.setattr(tensorboard, "_writers", {})
    with pytest.raises(LstmlmError, match=r"pip install 'lstmlm\[tensorboard\]'"):
        tensorboard.write_scalars(tmp_path, {"epoch": 1, "train_loss": 1.0})
