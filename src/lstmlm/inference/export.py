"""`lstmlm export RUN_DIR --format onnx --out DIR`: the model as an ONNX step function, for use without Python.

    DIR/model.onnx    one step: ids (batch, 1) int64, h and c (num_layers, batch, hidden) float32
                      -> logits (batch, vocabulary) float32, h_out, c_out (the state after the word)
    DIR/vocab.txt     a word run's vocabulary: word<TAB>count, line n = id n
                      (a char, byte or bpe run ships its tokenizer file instead, as in its run directory:
                      characters.json, bytes.json, or tokenizer.json, which Hugging Face `tokenizers` reads alone)
    DIR/export.json   names, shapes, the tokenizer and its file, the ids of <eos> and <unk>, and how prompts are read

To score or continue a text outside Python: start from zero h and c, feed `<eos>` and then each word's id one
step at a time, carrying h_out/c_out into the next step; the logits after the last word are the next word's
scores (softmax for probabilities). The graph is the float32 model (the exact reference) written with the LSTM
equations in plain ONNX operators (MatMul, Sigmoid, Tanh), opset 18, batch size free. `tests/test_export.py`
runs it in onnxruntime against lstmlm over a 50-word text (logits within 1e-4) and for greedy text (identical).

onnx and onnxscript (torch's exporter needs them) are the `onnx` extra: pip install 'lstmlm[onnx]'.
"""

import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

from lstmlm.data.tokenizers import tokenizer_file
from lstmlm.errors import LstmlmError
from lstmlm.files import atomic_path, atomic_write_text
from lstmlm.model.cell import lstm_cell

INSTALL_HINT = "lstmlm export needs the onnx extra: pip install 'lstmlm[onnx]'"
OPSET = 18


def step_module(step_model):
    """A torch.nn.Module computing one step of a float32 TorchStepModel with the LSTM equations written out."""
    import torch

    class OnnxStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Parameter(step_model.embedding.clone(), requires_grad=False)
            weights = step_model.flat_weights
            self.w_ih = torch.nn.ParameterList([torch.nn.Parameter(weights[4 * i].t().contiguous(), requires_grad=False)
                                                for i in range(step_model.num_layers)])  # (inputs, 4H)
            self.w_hh = torch.nn.ParameterList([torch.nn.Parameter(weights[4 * i + 1].t().contiguous(),
                                                                   requires_grad=False)
                                                for i in range(step_model.num_layers)])  # (H, 4H)
            self.bias = torch.nn.ParameterList([torch.nn.Parameter(weights[4 * i + 2].clone(), requires_grad=False)
                                                for i in range(step_model.num_layers)])
            self.output_weight = torch.nn.Parameter(step_model.output_weight.t().contiguous(), requires_grad=False)
            self.output_bias = torch.nn.Parameter(step_model.output_bias.clone(), requires_grad=False)

        def forward(self, ids, h, c):
            x = self.embedding[ids[:, 0]]  # (batch, embedding)
            hs, cs = [], []
            for layer in range(len(self.w_ih)):
                gates = x @ self.w_ih[layer] + h[layer] @ self.w_hh[layer] + self.bias[layer]  # (batch, 4H): i f g o
                x, new_c, _ = lstm_cell(gates, c[layer], torch.sigmoid, torch.tanh)
                hs.append(x)
                cs.append(new_c)
            return x @ self.output_weight + self.output_bias, torch.stack(hs), torch.stack(cs)

    return OnnxStep().eval()


def export_onnx(language_model, out):
    """Write model.onnx, vocab.txt and export.json for a loaded LanguageModel into the directory `out`.

    Example:
        >>> export_onnx(lstmlm.load("runs/small"), "exported/small")     # doctest: +SKIP
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        import torch
    except ModuleNotFoundError:
        raise LstmlmError(INSTALL_HINT) from None
    from lstmlm.inference.step_model import TorchStepModel

    if language_model.model.softmax == "adaptive":
        raise LstmlmError("export: a run with --softmax adaptive cannot be exported to ONNX yet (the step module "
                          "has a single output matrix); export a --softmax full run")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LstmlmError(f"out {out}: exists and is not a directory", argument="out")
    out.mkdir(parents=True, exist_ok=True)
    step = TorchStepModel(language_model.model, "float32")
    module = step_module(step)
    L, H = step.num_layers, step.hidden_size
    example = (torch.zeros(2, 1, dtype=torch.int64), torch.zeros(L, 2, H), torch.zeros(L, 2, H))
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    try:
        onnx_logger.setLevel(logging.ERROR)  # the exporter logs every optional op it skips (torchvision's)
        with warnings.catch_warnings(), atomic_path(out / "model.onnx", "ONNX model") as temporary:
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(temporary), input_names=["ids", "h", "c"],
                              output_names=["logits", "h_out", "c_out"], opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False,
                              dynamic_shapes={"ids": {0: batch}, "h": {1: batch}, "c": {1: batch}})
    finally:
        onnx_logger.setLevel(level)
    vocabulary, kind = language_model.vocabulary, language_model.tokenizer.kind
    name = tokenizer_file(kind)
    with atomic_path(out / name, "tokenizer") as temporary:
        shutil.copyfile(language_model.run_directory.path / name, temporary)
    info = {"format": "onnx", "opset": OPSET, "model": "model.onnx", "vocabulary": name, "tokenizer": kind,
            "newline": "<eos>: every line is encoded on its own and each newline is the eos_id",
            "inputs": {"ids": ["batch", 1], "h": [L, "batch", H], "c": [L, "batch", H]},
            "outputs": {"logits": ["batch", step.vocabulary_size], "h_out": [L, "batch", H],
                        "c_out": [L, "batch", H]},
            "vocabulary_size": step.vocabulary_size, "num_layers": L, "hidden_size": H,
            "eos_id": language_model.eos_id, "unk_id": vocabulary.unk_id,
            "lowercase": language_model.config.lowercase,
            "usage": "start from zero h and c; feed <eos>, then each token id, one step at a time, carrying "
                     "h_out/c_out; the logits after the last token score the next token",
            "source_run": language_model.run_directory.path.resolve().name}
    atomic_write_text(out / "export.json", json.dumps(info, indent=2) + "\n", "export description")
    return out


# ---- the CLI verb ---------------------------------------------------------------------------------------
def add_parser(subparsers):
    parser = subparsers.add_parser("export", help="write the model for use outside Python (ONNX)",
                                   description="Export a run directory's model as an ONNX step model plus its "
                                               "vocabulary.")
    parser.add_argument("run_dir")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default onnx)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.set_defaults(handler=run_export)


def run_export(args):
    from lstmlm.inference.language_model import load

    model = load(args.run_dir, precision="float32")
    out = export_onnx(model, args.out)
    print(f"lstmlm: wrote {out}/model.onnx, {tokenizer_file(model.tokenizer.kind)}, export.json", file=sys.stderr)
    return 0
