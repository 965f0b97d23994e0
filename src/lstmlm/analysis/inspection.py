"""`lstmlm inspect RUN_DIR --text "..."`: what one LSTM layer's gates do, word by word.

The model reads `<eos>` and then the words of the text (as `predict` does). At every position the reference
cell of gates.py gives the input gate i, forget gate f, output gate o and cell state s of every unit; the
model itself gives its most likely next word. The heatmap has one panel per quantity, rows = units and
columns = positions, the words along the bottom and each position's top prediction along the top.
`--json` prints the same numbers instead. See docs/inspect.md.
"""

import json
import sys
from pathlib import Path

import numpy as np
from keras import ops

from lstmlm import torch_backend
from lstmlm.errors import LstmlmError
from lstmlm.analysis.gates import TRACE_NAMES, trace_gates

# the panels of the heatmap: (trace name, title, colour map, value range; None = symmetric around 0)
PANELS = [("input_gate", "input gate i (0 = ignore the new input, 1 = let it in)", "viridis", (0.0, 1.0)),
          ("forget_gate", "forget gate f (0 = forget the cell state, 1 = keep it)", "viridis", (0.0, 1.0)),
          ("output_gate", "output gate o (0 = hide the cell state, 1 = show it)", "viridis", (0.0, 1.0)),
          ("cell_state", "cell state s", "RdBu_r", None)]


def inspect_text(language_model, text, layer=None, units=32):
    """Gates, cell state and top next-word prediction at every position of a text.

    Args:
        language_model: a `lstmlm.inference.language_model.LanguageModel` (from `load(run_dir)`).
        text: the words to read; unknown words are read as <unk> and listed under "unknown_words".
        layer: 1-based LSTM layer; None = the last.
        units: how many units to report (the first ones); 0 or None = all.
    Returns:
        {"layer", "num_layers", "hidden_size", "units" (how many reported), "unknown_words",
         "positions": [{"word", "top_prediction", "input_gate": [units floats], "forget_gate", "cell_input",
                        "output_gate", "cell_state", "hidden_state"}, ...]}, one position per word read,
        the leading <eos> first.

    Example:
        >>> from lstmlm.inference.language_model import load
        >>> result = inspect_text(load("runs/ptb-small"), "the stock market", units=4)    # doctest: +SKIP
        >>> [p["word"] for p in result["positions"]], len(result["positions"][1]["forget_gate"])  # doctest: +SKIP
        (['<eos>', 'the', 'stock', 'market'], 4)
    """
    model = language_model.model
    num_layers = len(model.lstm_layers)
    layer = num_layers if layer is None else layer
    if not 1 <= layer <= num_layers:
        raise LstmlmError(f"--layer must be between 1 and {num_layers}, got {layer}")
    if units is not None and units < 0:
        raise LstmlmError(f"--units must be >= 0 (0 = all), got {units}")
    ids, words, unknown = language_model.encode_prompt(text)
    if not words:
        raise LstmlmError("inspect: --text has no words")
    trace = trace_gates(model, ids)[layer - 1]  # name -> (time, hidden_size)
    shown = model.hidden_size if not units else min(units, model.hidden_size)
    with torch_backend.no_grad():  # the model's own forward pass for its predictions
        logits, _ = model.call_with_states(ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)[None, :]))
    top = np.argmax(torch_backend.to_numpy(logits[0]), axis=-1)  # (time,)
    positions = []
    for t, word_id in enumerate(ids):
        position = {"word": language_model.token_text(word_id), "top_prediction": language_model.token_text(top[t])}
        for name in TRACE_NAMES:
            position[name] = [round(float(v), 6) for v in trace[name][t, :shown]]
        positions.append(position)
    return {"layer": layer, "num_layers": num_layers, "hidden_size": model.hidden_size, "units": shown,
            "unknown_words": unknown, "positions": positions}


def plot_gates(result, path, title=None):
    """Draw the result of `inspect_text` as a heatmap PNG: one panel per PANELS entry, units x positions.

    Args:
        result: the dict from `inspect_text`.
        path: the PNG file to write (its folder is created).
        title: figure title; default names the layer.
    Returns:
        the path.
    """
    from lstmlm.analysis.plots import import_pyplot, save_figure

    plt = import_pyplot()
    positions, units = result["positions"], result["units"]
    words = [p["word"] for p in positions]
    predictions = [p["top_prediction"] for p in positions]
    width = max(6.0, 1.6 + 0.55 * len(words))
    panel_height = max(1.6, 0.12 * units)
    # constrained layout keeps the two-line title, the predictions on top and the colour bars from overlapping
    figure, axes_list = plt.subplots(len(PANELS), 1, figsize=(width, 1.2 + panel_height * len(PANELS)), dpi=100,
                                     sharex=True, squeeze=False, layout="constrained")
    for axes, (name, panel_title, colours, value_range) in zip(axes_list[:, 0], PANELS):
        values = np.array([p[name] for p in positions]).T  # (units, positions): one row per unit
        if value_range is None:
            limit = max(float(np.abs(values).max()), 1e-6)
            value_range = (-limit, limit)
        image = axes.imshow(values, aspect="auto", cmap=colours, vmin=value_range[0], vmax=value_range[1],
                            interpolation="nearest")
        axes.set_title(panel_title, fontsize=9, loc="left")
        axes.set_ylabel("unit")
        figure.colorbar(image, ax=axes, fraction=0.03, pad=0.01)
    top_axes, bottom_axes = axes_list[0, 0], axes_list[-1, 0]
    bottom_axes.set_xticks(range(len(words)), words, rotation=60, ha="right", fontsize=8)
    bottom_axes.set_xlabel("word read at this position")
    # the prediction made after reading each word, above the first panel
    above = top_axes.secondary_xaxis("top")
    above.set_xticks(range(len(predictions)), [f"→ {p}" for p in predictions], rotation=60, ha="left",
                     fontsize=8, color="tab:red")
    figure.suptitle(title or f"LSTM layer {result['layer']} of {result['num_layers']}: gates and cell state per word\n"
                    f"units 0-{units - 1} of {result['hidden_size']}; red, above: the top next-word prediction",
                    fontsize=10)
    return save_figure(figure, path)


def add_parser(subparsers):
    parser = subparsers.add_parser("inspect", help="heatmap (or JSON) of an LSTM layer's gates, word by word",
                                   description="Show the input, forget and output gates and the cell state of "
                                               "one LSTM layer at every word of a text, with the model's top "
                                               "next-word prediction after each word.")
    parser.add_argument("run_dir")
    parser.add_argument("--text", required=True, help="the words to read")
    parser.add_argument("--layer", type=int, default=None, help="1-based LSTM layer (default: the last)")
    parser.add_argument("--units", type=int, default=32, help="show the first N units (default 32; 0 = all)")
    parser.add_argument("--out", help="heatmap PNG (default: RUN_DIR/plots/inspect-layer-N.png unless --json)")
    parser.add_argument("--json", action="store_true", help="print the values as JSON")
    parser.set_defaults(handler=run_inspect)


def run_inspect(args):
    from lstmlm.inference.language_model import load

    result = inspect_text(load(args.run_dir), args.text, args.layer, args.units)
    if result["unknown_words"]:
        print(f"note: not in the vocabulary, read as <unk>: {' '.join(result['unknown_words'])}", file=sys.stderr)
    out = args.out
    if out is None and not args.json:
        out = Path(args.run_dir) / "plots" / f"inspect-layer-{result['layer']}.png"
    if out is not None:
        path = plot_gates(result, out)
        print(path, file=sys.stderr if args.json else sys.stdout)  # stdout stays pure JSON with --json
    if args.json:
        print(json.dumps(result))
    return 0
