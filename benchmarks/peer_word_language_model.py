#!/usr/bin/env python
"""The peer in benchmarks/race.py: pytorch/examples' word_language_model recipe, re-implemented in plain PyTorch.

    python benchmarks/peer_word_language_model.py --max-minutes 15 --threads 1 --json peer.json     # PTB
    python benchmarks/peer_word_language_model.py --train T --valid V --test X --max-minutes 15 --json peer.json

The recipe (pytorch/examples `main.py --tied` defaults):
  - Embedding 200 -> LSTM 200 x2 -> Linear(200, vocabulary), the softmax weights tied to the embedding;
    embedding and decoder weights uniform(-0.1, 0.1), decoder bias 0, LSTM at torch's default initialisation;
  - dropout 0.2 on the embedding output, between the LSTM layers (nn.LSTM's own dropout) and before the decoder;
  - 20 parallel streams x 35 steps, the state carried from batch to batch (truncated BPTT), reset every epoch;
  - plain SGD at lr 20 on the mean cross-entropy per token, gradient norm clipped to 0.25;
  - after each epoch, validation on 10 parallel streams; the best-validation weights are kept; lr / 4 whenever
    validation does not improve.

What this version adds for the race (the peer itself has none of it):
  - a wall-clock budget (`--max-minutes`), checked between batches, that starts when training starts (after the
    corpus is read and the model is built); validations during training count against it. When it ends inside an
    epoch, the partial epoch's model is validated too (`--partial-epoch validate`, the default; lstmlm likewise
    validates after its budget) and kept if it is the best. `--partial-epoch discard` does what the peer does on
    Ctrl-C instead: the partial epoch is thrown away (if no epoch finished, the final model is used).
  - the vocabulary and ids come from lstmlm's own corpus code (`lstmlm.data.corpus.load_corpus`), so both sides of the
    race see identical ids; the peer would number words in order of appearance over all three splits.
  - the final report is exact, computed the way lstmlm.inference.evaluate counts: the split read as ONE stream at batch 1,
    the state carried through the whole text, the text preceded by `<eos>` so its first word is predicted, every
    token counted (PTB test: 82,430 tokens). It runs after the budget and is timed separately.
    (The peer reports test perplexity on 10 streams, trimmed to a multiple of 10.)
Everything is float32, as in the peer. Nothing is pickled: the result is a JSON file; the best weights stay in
memory unless `--save FILE.npz` is given.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # lstmlm (imported for its corpus code) imports Keras

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

EOS = "<eos>"


# ---- data ---------------------------------------------------------------------------------------------------
def lstmlm_corpus(data="ptb", train=None, valid=None, test=None, max_vocabulary_size=0):
    """lstmlm's Corpus (vocabulary built from train, every split as int32 ids) for these files.

    Works with lstmlm before and after issue 11's rename of `max_vocab` to `max_vocabulary_size`.
    `max_vocabulary_size` 0 keeps every training word.
    """
    from lstmlm.config import Config
    from lstmlm.data.corpus import load_corpus

    fields = {f.name for f in dataclasses.fields(Config)}
    if "max_vocabulary_size" in fields:
        cap = {"max_vocabulary_size": max_vocabulary_size}
    else:  # older lstmlm: no "0 = every word"; a cap above any corpus' type count does the same
        cap = {"max_vocab": max_vocabulary_size or 10**9}
    return load_corpus(Config(data=data, train=train, valid=valid, test=test, **cap))


def vocabulary_sha256(words):
    """Fingerprint of a vocabulary in id order (race.py compares it with lstmlm's vocab.txt)."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def batchify(ids, streams, device="cpu"):
    """Cut a 1-D id sequence into `streams` parallel streams: a (time, streams) int64 tensor.

    The tail that does not fill a whole row is dropped, as the peer does.

    Example:
        >>> batchify(np.arange(7), 2).tolist()
        [[0, 3], [1, 4], [2, 5]]
    """
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    length = len(ids) // streams
    return ids[: length * streams].view(streams, length).t().contiguous().to(device)


# ---- model --------------------------------------------------------------------------------------------------
class PeerModel(nn.Module):
    """Embedding -> dropout -> LSTM x layers (dropout between) -> dropout -> Linear, weights tied.

    Args:
        vocabulary_size: output classes.
        size: embedding and hidden size (equal, for tying).
        layers: stacked LSTM layers.
        dropout: the one dropout rate of the recipe.
        tied: share the embedding matrix with the decoder (Press & Wolf 2017).

    Example:
        >>> model = PeerModel(50, size=8)
        >>> logits, state = model(torch.zeros(3, 2, dtype=torch.long))   # (time, batch) ids
        >>> tuple(logits.shape), tuple(state[0].shape)
        ((3, 2, 50), (2, 2, 8))
    """

    def __init__(self, vocabulary_size, size=200, layers=2, dropout=0.2, tied=True):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, size)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(size, size, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(size, vocabulary_size)
        if tied:
            self.decoder.weight = self.embedding.weight
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)  # the same matrix as the embedding when tied

    def forward(self, ids, state=None):
        """ids: (time, batch) int64; state: (h, c), each (layers, batch, size), or None for zeros.
        Returns logits (time, batch, vocabulary) and the new state."""
        vectors = self.dropout(self.embedding(ids))  # (time, batch, size)
        outputs, state = self.lstm(vectors, state)  # (time, batch, size)
        return self.decoder(self.dropout(outputs)), state


def detach(state):
    return None if state is None else tuple(s.detach() for s in state)


# ---- evaluation ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_stream(model, stream, chunk_length=35):
    """Mean cross-entropy (nats) and top-1 accuracy over a (time, streams) tensor, the state carried.

    Every position but the first of each stream is predicted from the ones before it.
    Returns (loss, accuracy, tokens).
    """
    model.eval()
    total, hits, tokens, state = 0.0, 0, 0, None
    for start in range(0, stream.shape[0] - 1, chunk_length):
        targets = stream[start + 1 : start + 1 + chunk_length]  # (time, streams)
        inputs = stream[start : start + len(targets)]
        logits, state = model(inputs, state)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        total += F.cross_entropy(flat, targets.reshape(-1), reduction="sum").item()
        hits += int((flat.argmax(-1) == targets.reshape(-1)).sum())
        tokens += targets.numel()
    return total / tokens, hits / tokens, tokens


def evaluate_exact(model, ids, eos_id, device="cpu", chunk_length=256):
    """lstmlm's count: the split as one stream (batch 1), preceded by `<eos>` (when the vocabulary has it) so
    its first word is predicted too; every token counted. Returns a dict like lstmlm.inference.evaluate's."""
    started = time.perf_counter()
    prefix = [] if eos_id is None else [eos_id]
    stream = torch.as_tensor(np.concatenate([prefix, np.asarray(ids)]), dtype=torch.long, device=device)
    loss, accuracy, tokens = evaluate_stream(model, stream[:, None], chunk_length)
    return {"tokens": tokens, "loss": loss, "perplexity": math.exp(loss), "accuracy": accuracy,
            "seconds": time.perf_counter() - started}


# ---- training -----------------------------------------------------------------------------------------------
def train_epoch(model, stream, learning_rate, clip, bptt, out_of_time, log, epoch, log_interval=200):
    """One pass over a (time, streams) training tensor, or until out_of_time() says stop (checked before each
    batch). Returns (summed loss x tokens, tokens, batches run, stopped by the budget)."""
    model.train()
    parameters = [p for p in model.parameters()]
    total, tokens, batches, state = 0.0, 0, 0, None
    steps = -(-(stream.shape[0] - 1) // bptt)
    started = time.perf_counter()
    for start in range(0, stream.shape[0] - 1, bptt):
        if out_of_time():
            return total, tokens, batches, True
        targets = stream[start + 1 : start + 1 + bptt]  # (time, streams)
        inputs = stream[start : start + len(targets)]
        state = detach(state)  # truncated BPTT: keep the values, cut the graph
        logits, state = model(inputs, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, clip)
        with torch.no_grad():  # the peer's hand-written SGD step
            for p in parameters:
                p.add_(p.grad, alpha=-learning_rate)
        total += loss.item() * targets.numel()
        tokens += targets.numel()
        batches += 1
        if batches % log_interval == 0:
            log(f"epoch {epoch} | {batches}/{steps} batches | lr {learning_rate:g} | loss {total / tokens:.3f} | "
                f"{tokens / (time.perf_counter() - started):,.0f} tok/s")
    return total, tokens, batches, False


def run(args, log=None):
    """Train and evaluate; returns the result dict (also written to --json)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    corpus = lstmlm_corpus(args.data, args.train, args.valid, args.test, args.max_vocabulary_size)
    vocabulary = corpus.vocabulary
    if "test" not in corpus.splits:
        raise SystemExit("peer: error: a test split is needed (--test)")
    model = PeerModel(len(vocabulary), args.size, args.layers, args.dropout, tied=True).to(device)
    train_stream = batchify(corpus["train"], args.batch_size, device)
    valid_stream = batchify(corpus["valid"], args.eval_batch_size, device)
    batches_per_epoch = -(-(train_stream.shape[0] - 1) // args.bptt)
    log(f"peer: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(vocabulary):,}, "
        f"train {len(corpus['train']):,} tokens, {batches_per_epoch} batches per epoch, {device}, "
        f"{torch.get_num_threads()} threads")

    budget = 60.0 * args.max_minutes
    started = time.perf_counter()

    def elapsed():
        return time.perf_counter() - started

    def out_of_time():
        return budget > 0 and elapsed() >= budget

    learning_rate, best_loss, best_state, best_epoch = args.learning_rate, math.inf, None, None
    history, train_tokens, train_seconds, stopped = [], 0, 0.0, False
    for epoch in range(1, args.epochs + 1):
        if out_of_time():
            stopped = True
            break
        epoch_started = time.perf_counter()
        total, tokens, batches, stopped = train_epoch(model, train_stream, learning_rate, args.clip, args.bptt,
                                                      out_of_time, log, epoch)
        seconds = time.perf_counter() - epoch_started
        train_tokens, train_seconds = train_tokens + tokens, train_seconds + seconds
        if batches == 0 or (stopped and args.partial_epoch == "discard"):
            if stopped:
                log(f"epoch {epoch}: the budget ends after {batches}/{batches_per_epoch} batches; partial epoch "
                    "discarded")
            break
        valid_loss, valid_accuracy, valid_tokens = evaluate_stream(model, valid_stream, args.bptt)
        improved = valid_loss < best_loss
        row = {"epoch": epoch, "fraction": round(batches / batches_per_epoch, 4),
               "train_loss": round(total / tokens, 5), "valid_loss": round(valid_loss, 5),
               "valid_perplexity": round(math.exp(valid_loss), 3), "valid_tokens": valid_tokens,
               "learning_rate": learning_rate, "train_tokens": tokens,
               "tokens_per_second": round(tokens / seconds, 1),
               "epoch_seconds": round(time.perf_counter() - epoch_started, 2), "wall_seconds": round(elapsed(), 2)}
        history.append(row)
        log(f"epoch {epoch}{' (partial: the budget ended)' if stopped else ''}: {batches}/{batches_per_epoch} "
            f"batches | train loss {row['train_loss']:.4f} | valid loss {valid_loss:.4f} (ppl "
            f"{row['valid_perplexity']:.2f}, {args.eval_batch_size} streams) | lr {learning_rate:g} | "
            f"{row['tokens_per_second']:,.0f} tok/s | {row['epoch_seconds']:.0f} s")
        if improved:
            best_loss, best_epoch = valid_loss, epoch
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        else:
            learning_rate /= 4.0  # the peer's annealing
        if stopped:
            break
    training_wall = elapsed()
    if best_state is not None:
        model.load_state_dict(best_state)

    eos_id = vocabulary.index.get(EOS)
    final = {split: evaluate_exact(model, corpus[split], eos_id, device) for split in ("valid", "test")}
    for split, values in final.items():
        log(f"{split} (exact, batch 1): loss {values['loss']:.4f} nats | perplexity {values['perplexity']:.2f} | "
            f"{values['tokens']:,} tokens | {values['seconds']:.1f} s")
    if args.save:
        save_weights(model, args.save)
    result = {
        "side": "peer", "recipe": "pytorch/examples word_language_model --tied (plain PyTorch re-implementation)",
        "arguments": {k: v for k, v in vars(args).items() if k != "json"},
        "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": "float32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocabulary_size": len(vocabulary), "vocabulary_sha256": vocabulary_sha256(vocabulary.words),
        "tokens": {split: int(len(ids)) for split, ids in corpus.splits.items()},
        "budget_seconds": budget, "stopped_by_budget": stopped,
        "epochs": round(train_tokens / len(corpus["train"]), 3),
        "epochs_validated": len(history), "best_epoch": best_epoch,
        "train_tokens": train_tokens, "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(train_tokens / max(train_seconds, 1e-9), 1),
        "training_wall_seconds": round(training_wall, 2),
        "history": history,
        "final": {split: {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}
                  for split, values in final.items()},
        "final_evaluation_seconds": round(sum(v["seconds"] for v in final.values()), 2),
    }
    if args.json:
        write_json(args.json, result)
    return result


def save_weights(model, path):
    """The weights as .npz (no pickle), written atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(temporary, **{name: value.detach().cpu().numpy() for name, value in model.state_dict().items()})
    os.replace(temporary, path)


def write_json(path, values):
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="ptb", help="lstmlm's bundled corpus, when --train is not given")
    parser.add_argument("--train", help="training text (UTF-8, one sentence per line)")
    parser.add_argument("--valid", help="validation text")
    parser.add_argument("--test", help="test text")
    parser.add_argument("--max-vocabulary-size", type=int, default=0, help="0 = every training word")
    parser.add_argument("--size", type=int, default=200, help="embedding = hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--learning-rate", type=float, default=20.0)
    parser.add_argument("--clip", type=float, default=0.25, help="gradient norm clip")
    parser.add_argument("--bptt", type=int, default=35, help="time steps per batch")
    parser.add_argument("--batch-size", type=int, default=20, help="parallel training streams")
    parser.add_argument("--eval-batch-size", type=int, default=10, help="parallel streams for validation")
    parser.add_argument("--epochs", type=int, default=40, help="upper epoch limit (the peer's default)")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock training budget (0 = none)")
    parser.add_argument("--partial-epoch", choices=["validate", "discard"], default="validate",
                        help="when the budget ends inside an epoch: validate that model, or drop it")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--device", default="auto", help="auto (CUDA if torch sees one), cpu, cuda")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--save", help="also write the best weights to this .npz")
    args = parser.parse_args(argv)
    if (args.train is None) != (args.valid is None) or (args.test is not None and args.train is None):
        parser.error("--train and --valid go together; --test needs them")
    if args.train is not None and args.test is None:
        parser.error("--test is needed: the race reports test perplexity")
    return args


def main(argv=None):
    from lstmlm.errors import LstmlmError

    args = parse_args(argv)
    try:
        run(args)
    except LstmlmError as error:  # a missing or unreadable corpus file: one line, as lstmlm says it
        print(f"peer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
