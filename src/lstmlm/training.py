"""Training: a Keras model, a PyTorch-backend training loop (the pattern of the Keras guide "Writing a training
loop from scratch in PyTorch"), truncated BPTT with the state carried across batches, per-epoch validation,
checkpoints, history, resume and a clean Ctrl-C.

Why a custom loop rather than model.fit: carrying the LSTM state between batches (and resetting it per epoch)
is a loop concern, and torch's fused optimizers with the fused LSTM kernel run the step at the speed of
hand-written PyTorch. The model, its weights and its files stay plain Keras.
"""

import math
import platform
import shlex
import sys
import time
from pathlib import Path

import keras
import numpy as np

from lstmlm import run_directory as rd
from lstmlm import torch_backend
from lstmlm.batches import WindowBatches, num_stream_batches, stream_batches
from lstmlm.config import Config
from lstmlm.corpus import load_corpus
from lstmlm.errors import LstmlmError
from lstmlm.evaluate import evaluate_ids
from lstmlm.model import build_model
from lstmlm.optimizer import load_optimizer_state, make_optimizer, optimizer_state
from lstmlm.progress import Progress
from lstmlm.schedule import LearningRate

HISTORY_FIELDS = ["epoch", "train_loss", "train_perplexity", "train_accuracy", "valid_loss", "valid_perplexity",
                  "valid_accuracy", "valid_top5_accuracy", "learning_rate", "train_tokens", "tokens_per_second",
                  "epoch_seconds", "wall_seconds"]


def versions():
    import torch

    return {"lstmlm": __import__("lstmlm").__version__, "keras": keras.__version__, "torch": torch.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}


def _new_run_directory(out):
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LstmlmError(f"--out {out}: exists and is not a directory")
    if (out / rd.CONFIG).exists():
        raise LstmlmError(f"--out {out}: already holds a run (use --resume {out} or another --out)")
    (out / rd.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return out


class _Epoch:
    """The running sums of one training epoch (kept on the device; read once per log line)."""

    def __init__(self, device, saved=None):
        import torch

        saved = saved or {"loss": 0.0, "hits": 0.0, "tokens": 0}
        self.loss = torch.tensor(float(saved["loss"]), dtype=torch.float64, device=device)
        self.hits = torch.tensor(float(saved["hits"]), dtype=torch.float64, device=device)
        self.tokens = int(saved["tokens"])

    def add(self, loss, hits, tokens):
        self.loss += loss.detach().double() * tokens
        self.hits += hits.double()
        self.tokens += tokens

    def mean_loss(self):
        return self.loss.item() / max(1, self.tokens)

    def as_dict(self):
        return {"loss": self.loss.item(), "hits": self.hits.item(), "tokens": self.tokens}


def train_step(model, optimizer, parameters, x, y, states, clip_norm, precision, device, sum_over_time=False):
    """One optimisation step on a (batch, time) batch; returns (mean loss tensor, top-1 hits tensor, states).

    The loss is the mean cross-entropy in nats over the batch's tokens (sparse targets, logits: the same
    mathematics as the tutorial's softmax + one-hot categorical cross-entropy). With `sum_over_time` the
    gradient is that of the loss summed over time and averaged over the batch (mean x time steps).
    """
    import torch

    x = torch.as_tensor(x, dtype=torch.long, device=device)  # (batch, time)
    y = torch.as_tensor(y, dtype=torch.long, device=device).reshape(-1)  # (batch * time,)
    with torch_backend.precision_context(precision):
        logits, new_states = model.call_with_states(x, states, training=True)  # (batch, time, vocab)
    flat = logits.float().reshape(-1, logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(flat, y)
    optimizer.zero_grad(set_to_none=True)
    (loss * x.shape[1] if sum_over_time else loss).backward()
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, clip_norm, foreach=True)
    optimizer.step()
    with torch.no_grad():  # top-1 hit: the target's logit is the row's maximum (amax is 4x cheaper than argmax)
        hits = (flat.gather(1, y[:, None])[:, 0] >= flat.amax(-1)).sum()
    return loss.detach(), hits, new_states


def train(config, out="runs/latest", resume=None, log=None, command=None, progress=None):
    """Train a model and write its run directory; returns the run directory's Path.

    Args:
        config: a Config (ignored with `resume`, which reads the run's own config.json).
        out: the new run directory.
        resume: an existing run directory to continue (after Ctrl-C, or to add epochs).
        log: a function taking one line of text (default: print to stderr).
        command: the command line to record (default: sys.argv).
        progress: True for a progress bar, False for plain lines, None = bar only on a terminal.

    Example:
        >>> train(preset("tiny", train="train.txt", valid="valid.txt"), out="runs/tiny")  # doctest: +SKIP
        PosixPath('runs/tiny')
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if not torch_backend.is_torch():
        raise LstmlmError(f"training needs the torch backend (KERAS_BACKEND is {keras.backend.backend()!r}); "
                          "evaluate, predict and generate work on any backend")
    import torch

    command = " ".join(shlex.quote(a) for a in (command or sys.argv))
    if resume is not None:
        out = rd.check_run_directory(resume, need_model=False)
        info = rd.read_json(out / rd.CONFIG)
        saved_config = Config.from_dict(info["config"], source=str(out / rd.CONFIG))
        if config is not None and config.epochs > saved_config.epochs:  # resume may extend the run
            saved_config.epochs = config.epochs
            info["config"]["epochs"] = config.epochs
        config = saved_config
        if not (out / rd.STATE).exists():
            raise LstmlmError(f"--resume {out}: no state.json, nothing to resume")
        state = rd.read_json(out / rd.STATE)
        info.setdefault("resumed", []).append(command)
    else:
        config.validate()
        state = None
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    precision = torch_backend.resolve_precision(config.precision)
    if precision == "bfloat16" and not torch_backend.bfloat16_supported():
        raise LstmlmError("--precision bfloat16: this machine has no native bfloat16 (needs a CUDA GPU with bf16 "
                          "or a CPU with avx512_bf16/AMX); use --precision float32 or auto")

    corpus = load_corpus(config)  # reads and checks every input before anything is written
    vocabulary, train_ids, valid_ids = corpus.vocabulary, corpus["train"], corpus["valid"]
    window = None
    if config.batching == "window":
        window = WindowBatches(train_ids, config.batch_size, config.num_steps, config.skip_step or config.num_steps)
        steps_per_epoch = window.steps_per_epoch
    else:
        steps_per_epoch = num_stream_batches(len(train_ids), config.batch_size, config.num_steps)
        if (len(train_ids) - 1) // config.batch_size < 1:  # stream_batches is lazy: check before writing anything
            raise LstmlmError(f"training split of {len(train_ids)} tokens is too short for one batch of "
                              f"{config.batch_size} streams")

    started = time.time()
    if state is None:
        out = _new_run_directory(out)
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, len(vocabulary))
        info = {"config": config.to_dict(), "command": command, "precision": precision,
                "device": torch_backend.device_type(), "versions": versions(),
                "parameters": int(model.count_params()), "corpus": corpus.sources,
                "tokens": {split: int(len(ids)) for split, ids in corpus.splits.items()},
                "vocabulary_size": len(vocabulary)}
        vocabulary.save(out / rd.VOCABULARY)
        history, epoch_done, batch_done, best, wall_before = [], 0, 0, math.inf, 0.0
    else:
        model = rd.load_keras_model(out / state["checkpoint"])
        history = rd.read_history(out / rd.HISTORY)[: state["epoch"]]
        epoch_done, batch_done, best = state["epoch"], state["batch"], state["best_valid_loss"]
        wall_before = state["wall_seconds"]
        if window is not None:
            window.current_idx = state["window_position"]
    rd.write_json(out / rd.CONFIG, info)
    parameters = [v.value for v in model.trainable_variables]
    optimizer = make_optimizer(config, parameters)
    schedule = LearningRate(config, steps_per_epoch)
    if state is not None:
        load_optimizer_state(optimizer, rd.load_arrays(out / state["optimizer"]), state["optimizer_groups"])
        schedule.load_state(state["schedule"])
    device = torch_backend.device_type()
    log(f"run {out}: {info['parameters']:,} parameters, vocabulary {len(vocabulary):,}, train {len(train_ids):,} / "
        f"valid {len(valid_ids):,} tokens, {steps_per_epoch:,} batches per epoch, {precision} on {device}")

    def wall():
        return wall_before + time.time() - started

    def save_state(epoch, batch, checkpoint, window_position, sums=None, states=None):
        # The optimizer and LSTM-state files are named after the checkpoint they belong to, and state.json,
        # written last, names all three: a crash at any point leaves state.json pointing at a consistent set.
        tag = Path(checkpoint).stem.replace("model-", "")
        arrays, groups = optimizer_state(optimizer)
        optimizer_file = f"{rd.CHECKPOINTS}/optimizer-{tag}.npz"
        rd.save_arrays(out / optimizer_file, arrays)
        states_file = None
        if states is not None:
            states_file = f"{rd.CHECKPOINTS}/states-{tag}.npz"
            rd.save_arrays(out / states_file, {f"{kind}{i}": s.detach().float().cpu().numpy()
                                               for i, pair in enumerate(states) for kind, s in zip("hc", pair)})
        rd.write_json(out / rd.STATE, {
            "epoch": epoch, "batch": batch, "checkpoint": checkpoint, "optimizer": optimizer_file,
            "states": states_file, "best_valid_loss": best, "wall_seconds": wall(), "optimizer_groups": groups,
            "schedule": schedule.state(), "window_position": window_position, "partial_sums": sums})
        for old in (out / rd.CHECKPOINTS).glob("*.npz"):  # only the set state.json names is needed
            if f"{rd.CHECKPOINTS}/{old.name}" not in (optimizer_file, states_file):
                old.unlink()

    epoch, batches_done = epoch_done, 0
    try:
        for epoch in range(epoch_done + 1, config.epochs + 1):
            if schedule.out_of_time(wall()):
                log(f"stopping before epoch {epoch}: the --max-minutes {config.max_minutes:g} budget is spent")
                break
            epoch_window_position = window.current_idx if window else 0
            batches = window.epoch() if window else stream_batches(train_ids, config.batch_size, config.num_steps)
            states = None if window else model.initial_states(config.batch_size)
            sums, skip = _Epoch(device), 0
            if epoch == epoch_done + 1 and batch_done:  # resuming inside an interrupted epoch
                skip, sums = batch_done, _Epoch(device, state["partial_sums"])
                if window is None:
                    saved = rd.load_arrays(out / state["states"])
                    states = [tuple(torch.as_tensor(saved[f"{k}{i}"], device=device) for k in "hc")
                              for i in range(config.num_layers)]
            batches_done = skip
            bar = Progress(steps_per_epoch, f"epoch {epoch}/{config.epochs}", enabled=progress, log=log)
            epoch_started, tokens_this_run = time.time(), 0
            for index, (x, y) in enumerate(batches):
                if index < skip:
                    continue
                # Dropout masks depend only on (seed, epoch, batch): a resumed run draws the unbroken run's masks.
                for owner in [model, *model.lstm_layers]:
                    owner.seed_generator.state.assign(
                        np.array([owner.seed or 0, epoch * 1_000_003 + index], dtype="uint32"))
                learning_rate = schedule.at_step(epoch, index, wall())
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
                loss, hits, new_states = train_step(model, optimizer, parameters, x, y, states, config.clip_norm,
                                                    precision, device, config.sum_over_time)
                if window is None:  # truncated BPTT: keep the state's values, cut its graph
                    states = [(h.detach(), c.detach()) for h, c in new_states]
                batches_done = index + 1
                sums.add(loss, hits, x.size)
                tokens_this_run += x.size
                if bar.due(batches_done):
                    bar.update(batches_done, f"loss {sums.mean_loss():.3f} ppl {math.exp(sums.mean_loss()):.1f} "
                               f"lr {learning_rate:.3g} {tokens_this_run / (time.time() - epoch_started):,.0f} tok/s")
                if schedule.out_of_time(wall(), during_epoch=True):
                    log(f"epoch {epoch}: the time budget ends after {batches_done}/{steps_per_epoch} batches")
                    break
            bar.close()
            train_seconds = time.time() - epoch_started
            valid = evaluate_ids(model, valid_ids, vocabulary, config.eval_batch_size, precision=precision)
            row = {"epoch": epoch, "train_loss": round(sums.mean_loss(), 5),
                   "train_perplexity": round(math.exp(sums.mean_loss()), 3),
                   "train_accuracy": round(sums.hits.item() / max(1, sums.tokens), 5),
                   "valid_loss": round(valid["loss"], 5), "valid_perplexity": round(valid["perplexity"], 3),
                   "valid_accuracy": round(valid["accuracy"], 5),
                   "valid_top5_accuracy": round(valid["top5_accuracy"], 5),
                   "learning_rate": float(f"{schedule.rate:.6g}"), "train_tokens": sums.tokens,
                   "tokens_per_second": round(tokens_this_run / max(train_seconds, 1e-9), 1),
                   "epoch_seconds": round(time.time() - epoch_started, 2), "wall_seconds": round(wall(), 2)}
            history.append(row)
            schedule.end_epoch(valid["loss"], valid["seconds"])
            checkpoint = f"{rd.CHECKPOINTS}/model-{epoch:02d}.keras"
            rd.save_model(model, out / checkpoint)
            if valid["loss"] < best:
                best = valid["loss"]
                rd.save_model(model, out / rd.MODEL)
            rd.write_history(out / rd.HISTORY, history, HISTORY_FIELDS)
            save_state(epoch, 0, checkpoint, window.current_idx if window else 0)
            _prune_checkpoints(out, config.keep_checkpoints, epoch)
            log(f"epoch {epoch}: train loss {row['train_loss']:.4f} nats (ppl {row['train_perplexity']:.2f}, "
                f"acc {row['train_accuracy']:.4f}, {sums.tokens:,} tokens) | valid loss {row['valid_loss']:.4f} "
                f"nats (ppl {row['valid_perplexity']:.2f}, acc {row['valid_accuracy']:.4f}, {valid['tokens']:,} "
                f"tokens) | lr {row['learning_rate']:.4g} | {row['tokens_per_second']:,.0f} tok/s | "
                f"{row['epoch_seconds']:.0f} s")
            if config.tensorboard:
                from lstmlm.tensorboard import write_scalars

                write_scalars(out / "tensorboard", row)
            batches_done = 0
    except KeyboardInterrupt:
        # Save a resumable checkpoint of the epoch in progress; every earlier file stays as it was.
        if batches_done > 0:
            bar.close()
            checkpoint = f"{rd.CHECKPOINTS}/interrupted.keras"
            rd.save_model(model, out / checkpoint)
            save_state(epoch - 1, batches_done, checkpoint, epoch_window_position, sums.as_dict(),
                       states if window is None else None)
            log(f"interrupted in epoch {epoch} after {batches_done} batches: saved {out / checkpoint}; "
                f"continue with: lstmlm train --resume {out}")
        raise
    return out


def _prune_checkpoints(out, keep, epoch):
    if keep <= 0:
        return
    for old in range(1, epoch - keep + 1):
        path = out / rd.CHECKPOINTS / f"model-{old:02d}.keras"
        if path.exists():
            path.unlink()
