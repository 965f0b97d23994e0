"""benchmarks/char_race.py: lstmlm's character recipe against the real nanoGPT on PTB-char.

The real nanoGPT is not in this repository (a git checkout outside it, --nanogpt-dir). These tests run a stand-in
checkout written to tmp_path: a train.py with nanoGPT's command line and printed lines (tokens per iteration,
"step N: train loss, val loss", "saving checkpoint to", "iter N: loss, time Xms") that trains a tiny model of its
own model.py (GPTConfig, GPT, forward(idx, targets) -> (logits, loss), as nanoGPT's) and saves ckpt.pt in
nanoGPT's layout. They check the data files, the command line, the stop at the budget, the checkpoint counted
(the last written before the deadline, not the one written after it), and the exact scoring: every character of
the text once, by the window rule, against a brute-force computation per position. lstmlm's side is not trained
here (its commands and its run-directory summary are checked); no network, no real checkout.
"""

import json
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import char_race  # noqa: E402

STAND_IN_MODEL = '''
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(nn.Module):
    """A causal stand-in: token + position embeddings, the running mean of the window so far, a head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        width = 8
        self.wte = nn.Embedding(config.vocab_size, width)
        self.wpe = nn.Embedding(config.block_size, width)
        self.mix = nn.Linear(width, width)
        self.lm_head = nn.Linear(width, config.vocab_size)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size
        h = self.wte(idx) + self.wpe(torch.arange(t))
        mean = h.cumsum(dim=1) / torch.arange(1, t + 1)[None, :, None]
        x = h + torch.tanh(self.mix(mean))
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None
        return logits, loss
'''

STAND_IN_TRAIN = '''
import json
import os
import pickle
import signal
import sys
import time
from ast import literal_eval

import numpy as np
import torch

from model import GPT, GPTConfig

out_dir = "out"; eval_interval = 2000; log_interval = 1; eval_iters = 200; always_save_checkpoint = True
dataset = "openwebtext"; batch_size = 12; block_size = 1024; n_layer = 12; n_head = 12; n_embd = 768
dropout = 0.0; max_iters = 600000; lr_decay_iters = 600000; device = "cuda"; compile = True
for arg in sys.argv[1:]:
    if "=" not in arg:
        exec(open(arg).read())
    else:
        key, value = arg[2:].split("=")
        try:
            value = literal_eval(value)
        except (SyntaxError, ValueError):
            pass
        globals()[key] = value
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "argv.json"), "w") as handle:
    json.dump({"argv": sys.argv, "threads": torch.get_num_threads()}, handle)
data_dir = os.path.join("data", dataset)
with open(os.path.join(data_dir, "meta.pkl"), "rb") as handle:  # the file the race wrote for this test
    meta = pickle.load(handle)
train = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")
torch.manual_seed(1337)
model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=False,
                  vocab_size=meta["vocab_size"], dropout=dropout)
model = GPT(GPTConfig(**model_args))
optimizer = torch.optim.Adam(model.parameters(), lr=0.02)


def save(iter_num):
    state = {"_orig_mod." + key: value for key, value in model.state_dict().items()}
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "model_args": model_args,
                "iter_num": iter_num, "best_val_loss": torch.tensor(1.0), "config": {"out_dir": out_dir}},
               os.path.join(out_dir, "ckpt.pt"))


def late_save(signum, frame):
    # told to stop at the deadline: one more checkpoint, written after it, which the race must not count
    print(f"saving checkpoint to {out_dir}", flush=True)
    time.sleep(0.3)
    save(10 ** 6)
    sys.exit(0)


signal.signal(signal.SIGTERM, late_save)
print(f"tokens per iteration will be: {batch_size * block_size:,}")
t0, val, iter_num = time.time(), 5.0, 0
while True:
    if iter_num % eval_interval == 0:
        val -= 0.01  # always an improvement: every evaluation after step 0 saves
        print(f"step {iter_num}: train loss {val + 0.1:.4f}, val loss {val:.4f}")
        if iter_num > 0:
            print(f"saving checkpoint to {out_dir}")
            save(iter_num)
    ix = torch.randint(len(train) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(train[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(train[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    logits, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    time.sleep(0.04)
    t1 = time.time()
    dt, t0 = t1 - t0, t1
    print(f"iter {iter_num}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms, mfu -100.00%")
    iter_num += 1
    if iter_num > max_iters:
        break
'''


def stand_in_checkout(directory):
    directory = Path(directory)
    (directory / "config").mkdir(parents=True)
    (directory / "model.py").write_text(STAND_IN_MODEL)
    (directory / "train.py").write_text(STAND_IN_TRAIN)
    (directory / "config" / "train_shakespeare_char.py").write_text(
        "out_dir = 'out-shakespeare-char'\neval_interval = 250\nalways_save_checkpoint = False\n")
    return directory


def tiny_texts():
    """A small corpus: train has every character; test is 203 characters, so the last window is the odd one."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefgh \n"))
    train = "".join(alphabet[rng.integers(0, len(alphabet), 4000)]) + "\n"
    valid = "".join(alphabet[rng.integers(0, len(alphabet), 150)])
    test = "".join(alphabet[rng.integers(0, len(alphabet), 202)]) + "\n"
    return {"train": train, "valid": valid, "test": test}


def window_start(p, n, block):
    """The start of the window that scores position p, written from the rule in char_race's docstring."""
    half = block // 2
    if n <= block or p < block:
        return 0
    start = (p // half - 1) * half  # the regular window whose last half holds p
    return start if start + block <= n else n - block  # past the regular windows: the one ending at the end


def brute_force_nats(model, text, stoi, block):
    """Sum over positions of -log p(char | its window's characters before it), one forward per position."""
    stream = [stoi["\n"]] + [stoi[c] for c in text]
    x, y, n = stream[:-1], stream[1:], len(text)
    total = 0.0
    with torch.no_grad():
        for p in range(n):
            start = window_start(p, n, block)
            assert p - start >= min(p, block // 2)  # at least block/2 characters of context after the first window
            logits, _ = model(torch.tensor([x[start:p + 1]]), torch.tensor([y[start:p + 1]]))
            total -= float(F.log_softmax(logits[0, -1].double(), dim=-1)[y[p]])
    return total


def fake_lstmlm_run(run_dir, characters):
    """An lstmlm run directory's config.json, history.csv and characters.json, as `lstmlm train` writes them."""
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({
        "precision": "bfloat16", "parameters": 3_000_000, "versions": {"threads": 1, "torch": torch.__version__},
        "tokens": {"train": 4000, "valid": 150, "test": 203}}))
    (run_dir / "history.csv").write_text(
        "epoch,valid_loss,train_tokens,tokens_per_second,wall_seconds,valid_bits_per_character\n"
        "1,1.5,6400,3200,2.5,2.164\n2,1.4,1600,3200,3.0,2.02\n")
    (run_dir / "characters.json").write_text(json.dumps(
        {"tokenizer": "char", "format": 1, "lowercase": False, "tokens": [*sorted(set(characters) - {"\n"}),
                                                                          "<eos>", "<unk>"]}))


def test_windows_score_every_position_once_with_half_a_block_of_context():
    for n in (1, 63, 64, 65, 95, 96, 97, 203, 1000):
        scored = []
        for start, first in char_race.windows(n, 64):
            assert start >= 0 and start + min(n, 64) <= n
            assert first == 0 if start == 0 else first - start >= 32
            scored += range(first, start + min(n, 64))
        assert scored == list(range(n)), n
    assert char_race.windows(203, 64) == [(0, 0), (32, 64), (64, 96), (96, 128), (128, 160), (139, 192)]


def test_schedule_and_command_keep_the_readme_cpu_settings():
    assert char_race.schedule(900, 100.0) == (8730, 582)  # 0.97 * 900 s / 0.1 s = 8,730 iterations, 15 evaluations
    assert char_race.schedule(20, 100.0) == (195, 13)
    assert char_race.nanogpt_command("python", "d", "/o", 15, 1, always_save=True)[-1] == \
        "--always_save_checkpoint=True"
    command = char_race.nanogpt_command("python", "ptb_char", "/o", 8730, 582)
    assert command[:3] == ["python", "train.py", "config/train_shakespeare_char.py"]
    for flag in ("--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                 "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0",
                 "--max_iters=8730", "--lr_decay_iters=8730", "--eval_interval=582", "--dataset=ptb_char",
                 "--out_dir=/o"):
        assert command.count(flag) == 1, flag
    assert len(command) == len(char_race.README_COMMAND) + 4  # the README's 13 flags, 3 more, nothing else


def test_lstmlm_commands():
    namespace = type("Args", (), {"minutes": 15.0, "threads": 1, "seed": 1})()
    train, evaluate = char_race.lstmlm_commands("python", namespace, "RUN", None)
    assert train == ["python", "-m", "lstmlm", "train", "--preset", "speedrun-char", "--max-minutes", "15",
                     "--threads", "1", "--seed", "1", "--out", "RUN", "--no-report"]
    assert evaluate["test"] == ["python", "-m", "lstmlm", "evaluate", "RUN", "--split", "test", "--json",
                                "--precision", "float32"]
    train, _ = char_race.lstmlm_commands("python", namespace, "RUN", {"train": "a", "valid": "b", "test": "c"})
    assert train[-6:] == ["--train", "a", "--valid", "b", "--test", "c"]


def test_unseen_characters_fail_loudly():
    with pytest.raises(SystemExit, match=r"test has characters nanoGPT's vocabulary lacks: \['z'\]"):
        char_race.encode("abz", {"a": 0, "b": 1}, "test")


def test_calibration_reads_its_printed_iteration_times(tmp_path):
    checkout = stand_in_checkout(tmp_path / "nanoGPT")
    char_race.prepare_nanogpt_data(checkout, "ptb_char", tiny_texts())
    calibration = char_race.calibrate(sys.executable, checkout, "ptb_char", tmp_path, 1, 1.5, 1)
    # each stand-in iteration sleeps 40 ms; its iteration 0 (the step-0 evaluation) is left out
    assert 40 <= calibration["ms_per_iter"] <= 400
    assert calibration["copies"] == 1 and calibration["iterations"][0] >= 5
    # it evaluates at step 0 only: the one checkpoint is the stand-in's own at its SIGTERM
    assert torch.load(tmp_path / "nanogpt-calibration-0" / "ckpt.pt", weights_only=True)["iter_num"] == 10 ** 6


def test_race_data_budget_checkpoint_and_exact_scores(tmp_path, monkeypatch):
    checkout = stand_in_checkout(tmp_path / "nanoGPT")
    texts = tiny_texts()
    chars = sorted(set(texts["train"]))

    def lstmlm_side(args, python, files, out, timeout, fence):  # not trained here: a run directory's summary
        time.sleep(9)  # "training" past nanoGPT's end: its scoring must wait for this
        fake_lstmlm_run(out / "lstmlm-run", texts["train"])
        fence.trained("lstmlm")
        final = {split: {"characters": len(texts[split]), "tokens": len(texts[split]), "loss": 1.0,
                         "bits_per_character": 1 / math.log(2), "seconds": 0.1} for split in ("valid", "test")}
        return {"side": "lstmlm", "commands": ["lstmlm ..."], **char_race.summarise_lstmlm(out / "lstmlm-run"),
                "final": final, "final_evaluation_seconds": 0.2}

    monkeypatch.setattr(char_race, "lstmlm_side", lstmlm_side)
    budget = 3.0
    args = char_race.parse_args(["--nanogpt-dir", str(checkout), "--minutes", str(budget / 60), "--threads", "1",
                                 "--nanogpt-max-iters", "150", "--out", str(tmp_path / "race")])
    result = char_race.race_run(args, texts=texts, log=lambda line: None)
    out = tmp_path / "race"
    nanogpt = result["sides"]["nanogpt"]
    assert "error" not in nanogpt, nanogpt.get("log_tail")

    # side by side: its scoring waited until the other side stopped training
    assert nanogpt["waited_for_the_other_side_seconds"] > 0.5

    # the data files, as nanoGPT's prepare.py writes them
    data = checkout / "data" / "ptb_char"
    train_ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    assert len(train_ids) == len(texts["train"]) == (data / "train.bin").stat().st_size // 2
    assert "".join(chars[i] for i in train_ids) == texts["train"]
    assert "".join(chars[i] for i in np.fromfile(data / "val.bin", dtype=np.uint16)) == texts["valid"]
    with open(data / "meta.pkl", "rb") as handle:  # written by the race in this test
        meta = pickle.load(handle)
    assert meta == {"vocab_size": 10, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}

    # the command train.py received: the README's CPU flags, 150 iterations, 15 evaluations, T threads
    received = json.loads((out / "nanogpt-out" / "argv.json").read_text())
    assert received["threads"] == 1
    for flag in ("config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                 "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                 "--n_embd=128", "--dropout=0.0", "--max_iters=150", "--lr_decay_iters=150", "--eval_interval=10",
                 "--dataset=ptb_char", f"--out_dir={out / 'nanogpt-out'}"):
        assert flag in received["argv"], flag
    assert nanogpt["max_iters"] == 150 and nanogpt["eval_interval"] == 10

    # the budget: stopped by it, 3 s of training counted from its loop's start
    assert nanogpt["stopped_by"] == "the budget (SIGTERM)"
    assert budget - 0.5 <= nanogpt["training_wall_seconds"] <= budget
    assert 20 <= nanogpt["iterations"] < 150  # ~45 ms an iteration: stopped long before max_iters
    assert nanogpt["tokens_per_iter"] == 12 * 64
    assert 768 / 0.4 <= nanogpt["characters_per_second"] <= 768 / 0.04  # 768 per iteration of 40 ms and more

    # the checkpoint counted: the last written within the budget, not the one written after the SIGTERM
    saves = nanogpt["checkpoints"]
    counted = [save for save in saves if save["within_budget"]]
    assert len(counted) >= 3 and [s["iter_num"] for s in counted] == list(range(10, 10 * len(counted) + 1, 10))
    assert all(save["seconds_after_training_start"] <= budget for save in counted)
    assert saves[-1]["within_budget"] is False and saves[-1]["seconds_after_training_start"] > budget
    assert nanogpt["checkpoint"] == counted[-1]
    kept = torch.load(out / "nanogpt-checkpoint.pt", weights_only=True)
    assert kept["iter_num"] == counted[-1]["iter_num"]
    assert torch.load(out / "nanogpt-out" / "ckpt.pt", weights_only=True)["iter_num"] == 10 ** 6  # the late one
    assert nanogpt["printed"]["val_loss_at_checkpoint"] == pytest.approx(5.0 - 0.01 * (kept["iter_num"] // 10 + 1))

    # the exact scores: every character once, equal to one forward per position by the window rule
    model, _ = char_race.load_nanogpt(out / "nanogpt-checkpoint.pt", checkout)
    stoi = {c: i for i, c in enumerate(chars)}
    for split in ("valid", "test"):
        final = nanogpt["final"][split]
        assert final["characters"] == len(texts[split])
        nats = brute_force_nats(model, texts[split], stoi, 64)
        assert final["loss"] * final["characters"] == pytest.approx(nats, rel=1e-5)
        assert final["bits_per_character"] == pytest.approx(nats / len(texts[split]) / math.log(2), rel=1e-5)
    assert nanogpt["parameters"] == sum(p.numel() for p in model.parameters())

    # the result: same characters scored, same vocabulary; the report's table
    checks = result["checks"]
    assert checks["complete"] and checks["same_vocabulary"] and checks["finite"]
    assert checks["every_test_character_scored"] and checks["every_valid_character_scored"]
    assert checks["lstmlm_test_lower_by_bits_per_character"] == pytest.approx(
        nanogpt["final"]["test"]["bits_per_character"] - 1 / math.log(2), abs=1e-4)
    lstmlm = result["sides"]["lstmlm"]
    assert lstmlm["epochs"] == 2.0 and lstmlm["characters_per_second"] == 3200.0
    assert lstmlm["checkpoint"]["best_epoch"] == 2 and lstmlm["training_wall_seconds"] == 3.0
    assert result["corpus"]["characters"] == {"train": 4001, "valid": 150, "test": 203}
    assert len(result["machine_at_end"]["load_average"]) == 3
    saved = json.loads((out / "result.json").read_text())
    assert saved["sides"]["nanogpt"]["final"] == nanogpt["final"]
    table = (out / "result.md").read_text()
    assert f"**{nanogpt['final']['test']['bits_per_character']:.4f}**" in table
    assert "all 203 characters" in table and f"ckpt.pt of iter {kept['iter_num']}" in table

