#!/usr/bin/env python
"""Speed benchmark: lstmlm against plain PyTorch and the Keras tutorial, on the CPU (or whatever torch sees).

    python benchmarks/throughput.py                   # full run (~5-10 min on 2 cores), writes docs/benchmarks-latest.{json,md}
    python benchmarks/throughput.py --quick           # < 60 s CI smoke check: small config only, exits 1 if
                                                      # lstmlm trains at < --min-ratio x plain PyTorch

What it measures (see docs/benchmarks.md for the method and results):
  1. training tokens/s, tutorial and small configs, batch 20, Zipf token ids over 10,000 words: lstmlm's real
     default step (build_model + make_optimizer + train.train_step), lstmlm with fused=False, plain PyTorch
     (reference_pytorch.py) and the tutorial's own Keras model (reference_keras_tutorial.py, tutorial only);
     warm-up steps, then `--repeats` rounds of `--steps` timed steps, the variants interleaved round by round;
  2. next-word latency (30-word prompt, batch 1) and greedy generation words/s, tutorial-size model, with
     prototypes of faster inference paths built from the model's own weights (no change to src/);
  3. peak RSS of tutorial training, each variant in a fresh subprocess;
  4. torch.profiler top ops of lstmlm's training step, and micro-benchmarks of the costs it points at.
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

VOCABULARY = 10000
BATCH = 20
SEED = 1234


# ---- data ------------------------------------------------------------------------------------------------
def zipf_batches(count, batch, num_steps, vocabulary=VOCABULARY, seed=SEED):
    """`count` (x, y) pairs of (batch, num_steps) int64 ids drawn from Zipf(s=1) over the vocabulary
    (id 0 most frequent), y = x shifted by one: random text whose unigram distribution can be learned."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocabulary + 1)
    ids = rng.choice(vocabulary, size=(count, batch, num_steps + 1), p=p / p.sum())
    return [(b[:, :-1].copy(), b[:, 1:].copy()) for b in ids]


def config_for(name, **overrides):
    from lstmlm.presets import preset

    return preset(name, **overrides)


# The fields the plain-PyTorch reference needs, copied from lstmlm's presets so that a process timing the
# reference alone never imports Keras; `check_light_configs` asserts they still match the presets.
LIGHT_CONFIGS = {
    "tutorial": dict(hidden_size=500, embedding_size=0, num_layers=2, num_steps=30, dropout=0.5, init_scale=0.0,
                     optimizer="adam", learning_rate=0.001, clip_norm=0.0, batching="window", seed=1,
                     sum_over_time=False),
    "small": dict(hidden_size=200, embedding_size=0, num_layers=2, num_steps=20, dropout=0.0, init_scale=0.1,
                  optimizer="sgd", learning_rate=1.0, clip_norm=5.0, batching="stream", seed=1,
                  sum_over_time=True),
}


def light_config(name):
    import types

    return types.SimpleNamespace(**LIGHT_CONFIGS[name])


def check_light_configs():
    for name, fields in LIGHT_CONFIGS.items():
        config = config_for(name)
        different = {k: (v, getattr(config, k, False)) for k, v in fields.items() if getattr(config, k, False) != v}
        if different:
            raise RuntimeError(f"LIGHT_CONFIGS[{name!r}] differs from the preset: {different}")


def call_with_states(model):
    """The model's (logits, states) entry point (`call_with_states`; `forward` in older lstmlm)."""
    return getattr(model, "call_with_states", None) or model.forward


# ---- training variants -------------------------------------------------------------------------------------
class LstmlmTrainer:
    """lstmlm's default training step exactly as training.train() runs it: its public Trainer, train_step and
    EpochProgress (state carried in stream mode)."""

    def __init__(self, config_name, fused=True, label=None):
        import keras

        from lstmlm import torch_backend
        from lstmlm.model import build_model
        from lstmlm.training import EpochProgress, Trainer

        self.name = label or ("lstmlm" if fused else "lstmlm fused=False")
        self.config = config_for(config_name, fused=fused)
        keras.utils.set_random_seed(self.config.seed)
        self.trainer = Trainer(self.config, build_model(self.config, VOCABULARY),
                               torch_backend.resolve_precision(self.config.precision))
        self.model, self.optimizer, self.parameters = self.trainer.model, self.trainer.optimizer, self.trainer.parameters
        self.precision, self.device = self.trainer.precision, self.trainer.device
        self.carry = self.config.batching == "stream"
        self.states = self.model.initial_states(self.config.batch_size) if self.carry else None
        self.progress = EpochProgress(1, self.device)

    def step(self, x, y):
        from lstmlm import torch_backend
        from lstmlm.training import train_step

        loss, hits, new_states = train_step(self.trainer, x, y, self.states)
        if self.carry:
            self.states = torch_backend.repackage_hidden(new_states)
        self.progress.add(loss, hits, x.size)
        return float(loss)


class LstmlmProposedTrainer(LstmlmTrainer):
    """Prototype of proposed train-step changes, without editing src/: (1) dropout through torch's native
    kernel (`torch.nn.functional.dropout`: one fused bernoulli+mul) instead of the seeded
    `keras.random.dropout` (new torch.Generator, full(), bernoulli, where, div per call); (2) no top-1 argmax
    over the (batch*time, vocab) logits in every step (accuracy computed only when it is reported)."""

    def __init__(self, config_name):
        super().__init__(config_name, label="prototype: lstmlm, native dropout, no per-step argmax")

    def step(self, x, y):
        import torch

        import lstmlm.model
        from lstmlm import torch_backend

        def native_dropout(values, rate, seed, variational=False):
            if rate <= 0:
                return values
            if variational:
                return original(values, rate, seed, variational)
            return torch.nn.functional.dropout(values, rate, training=True)

        original = lstmlm.model.dropout
        lstmlm.model.dropout = native_dropout
        try:
            x_t = torch.as_tensor(x, dtype=torch.long)
            y_t = torch.as_tensor(y, dtype=torch.long).reshape(-1)
            with torch_backend.precision_context(self.precision):
                logits, new_states = call_with_states(self.model)(x_t, self.states, training=True)
            flat = logits.float().reshape(-1, logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(flat, y_t)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * x_t.shape[1] if getattr(self.config, "sum_over_time", False) else loss).backward()
            if self.config.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.parameters, self.config.clip_norm, foreach=True)
            self.optimizer.step()
        finally:
            lstmlm.model.dropout = original
        if self.carry:
            self.states = [(h.detach(), c.detach()) for h, c in new_states]
        return float(loss.detach())


class NoMkldnn:
    """Wraps a trainer so its steps run torch's native (ATen) LSTM instead of oneDNN's (mkldnn disabled)."""

    def __init__(self, trainer):
        self.trainer, self.config = trainer, trainer.config
        self.name = f"{trainer.name}, oneDNN off (ATen LSTM)"

    def step(self, x, y):
        import torch

        with torch.backends.mkldnn.flags(enabled=False):
            return self.trainer.step(x, y)


class TorchTrainer:
    """Plain PyTorch fp32 reference (benchmarks/reference_pytorch.py), state carried where lstmlm carries it."""

    name = "plain PyTorch"

    def __init__(self, config_name):
        import torch

        import reference_pytorch

        self.config = light_config(config_name)
        torch.manual_seed(self.config.seed)
        self.model = reference_pytorch.build(self.config, VOCABULARY).train()
        self.optimizer = reference_pytorch.make_optimizer(self.config, self.model)
        self.carry = self.config.batching == "stream"
        self.state = None

    def step(self, x, y):
        import torch

        import reference_pytorch

        loss, state = reference_pytorch.train_step(self.model, self.optimizer, torch.from_numpy(x),
                                                   torch.from_numpy(y), self.state, self.config.clip_norm,
                                                   self.config.sum_over_time)
        if self.carry:
            self.state = tuple(s.detach() for s in state)
        return float(loss)


class KerasTutorialTrainer:
    name = "Keras tutorial (TimeDistributed, one-hot, train_on_batch)"

    def __init__(self, config_name):
        import keras

        import reference_keras_tutorial

        self.config = config_for(config_name)
        keras.utils.set_random_seed(self.config.seed)
        self.model = reference_keras_tutorial.build(VOCABULARY, self.config.hidden_size, self.config.num_steps,
                                                    dropout=self.config.dropout)

    def step(self, x, y):
        import reference_keras_tutorial

        return reference_keras_tutorial.train_step(self.model, x, y, VOCABULARY)


def make_trainer(kind, config_name):
    if kind == "lstmlm":
        return LstmlmTrainer(config_name)
    if kind == "lstmlm-unfused":
        return LstmlmTrainer(config_name, fused=False)
    if kind == "pytorch":
        return TorchTrainer(config_name)
    if kind == "keras-tutorial":
        return KerasTutorialTrainer(config_name)
    if kind == "lstmlm-proposed":
        return LstmlmProposedTrainer(config_name)
    if kind == "lstmlm-no-mkldnn":
        return NoMkldnn(LstmlmTrainer(config_name))
    if kind == "pytorch-no-mkldnn":
        return NoMkldnn(TorchTrainer(config_name))
    raise ValueError(kind)


def time_training(config_name, kinds, warmup, steps, repeats, log=print):
    """Interleaved timing: warm-up every variant, then `repeats` rounds, each running `steps` timed steps of
    every variant (order reversed on odd rounds). Every variant sees the same batches in the same order."""
    check_light_configs()
    config = config_for(config_name)
    tokens = BATCH * config.num_steps
    batches = zipf_batches(warmup + steps * repeats, BATCH, config.num_steps)
    trainers = [make_trainer(kind, config_name) for kind in kinds]
    results = {}
    for kind, trainer in zip(kinds, trainers):
        started = time.perf_counter()
        losses = [trainer.step(*batches[i]) for i in range(warmup)]
        results[kind] = {"variant": trainer.name, "losses": losses, "times": [], "round_medians_ms": [],
                         "warmup_seconds": round(time.perf_counter() - started, 2)}
    for r in range(repeats):
        order = list(zip(kinds, trainers))
        if r % 2:
            order.reverse()
        for kind, trainer in order:
            times = []
            for i in range(steps):
                x, y = batches[warmup + r * steps + i]
                started = time.perf_counter()
                loss = trainer.step(x, y)
                times.append(time.perf_counter() - started)
                results[kind]["losses"].append(loss)
            results[kind]["times"] += times
            results[kind]["round_medians_ms"].append(round(1000 * statistics.median(times), 1))
        log(f"  {config_name} round {r + 1}/{repeats}: " + ", ".join(
            f"{kind} {results[kind]['round_medians_ms'][-1]:.0f} ms" for kind in kinds))
    out = {}
    for kind in kinds:
        row = results[kind]
        ms = 1000 * statistics.median(row["times"])
        head, tail = row["losses"][:3], row["losses"][-3:]
        out[kind] = {"variant": row["variant"], "ms_per_step": round(ms, 1),
                     "tokens_per_second": round(tokens / ms * 1000, 1),
                     "round_medians_ms": row["round_medians_ms"], "timed_steps": len(row["times"]),
                     "warmup_steps": warmup, "warmup_seconds": row["warmup_seconds"],
                     "loss_first_step": round(row["losses"][0], 4), "loss_last_step": round(row["losses"][-1], 4),
                     "loss_first3_mean": round(statistics.fmean(head), 4),
                     "loss_last3_mean": round(statistics.fmean(tail), 4),
                     "loss_falls": statistics.fmean(tail) < statistics.fmean(head)}
    if "pytorch" in out:
        for kind in kinds:
            out[kind]["ratio_to_pytorch"] = round(out["pytorch"]["ms_per_step"] / out[kind]["ms_per_step"], 3)
    return {"config": config_name, "tokens_per_step": tokens, "batch_size": BATCH, "num_steps": config.num_steps,
            "hidden_size": config.hidden_size, "optimizer": config.optimizer, "clip_norm": config.clip_norm,
            "sum_over_time": bool(getattr(config, "sum_over_time", False)),
            "dropout": config.dropout, "state_carried": config.batching == "stream", "variants": out}


# ---- environment ---------------------------------------------------------------------------------------------
def environment():
    import keras
    import torch

    from lstmlm import torch_backend

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")),
                     []))
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni"]
    return {"cpu": model, "cpu_flags": {f: f in flags for f in wanted}, "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "keras": keras.__version__, "keras_backend": keras.backend.backend(),
            "numpy": np.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "precision": torch_backend.resolve_precision("auto"),
            "bfloat16_supported": torch_backend.bfloat16_supported(),
            "mkldnn": torch.backends.mkldnn.is_available(), "device": torch_backend.device_type(),
            "load_average_start": [round(v, 2) for v in os.getloadavg()]}


# ---- inference -------------------------------------------------------------------------------------------------
def make_run_directory(directory, config_name):
    """A run directory holding an untrained model of the config's size and a synthetic 10,000-word vocabulary."""
    import keras

    from lstmlm import run_directory as rd
    from lstmlm.model import build_model
    from lstmlm.vocabulary import Vocabulary

    config = config_for(config_name)
    keras.utils.set_random_seed(config.seed)
    directory = Path(directory)
    (directory / rd.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    words = ["<eos>", "<unk>"] + [f"w{i}" for i in range(VOCABULARY - 2)]
    Vocabulary(words, list(range(VOCABULARY, 0, -1))).save(directory / rd.VOCABULARY)
    rd.write_json(directory / rd.CONFIG, {"config": config.to_dict()})
    rd.save_model(build_model(config, VOCABULARY), directory / rd.MODEL)
    return directory


class FastInference:
    """Prototype of a proposed src change: an inference session that converts the Keras weights to torch
    layout ONCE (not per call), runs all layers in one torch.lstm call and the softmax layer only where needed,
    bypassing Keras layer __call__ overhead. Same mathematics as LSTMLanguageModel.call_with_states(training=False)."""

    def __init__(self, model):
        import torch

        with torch.no_grad():
            self.embedding = model.embedding.embeddings.value.detach()
            self.weights = []
            for layer in model.lstm_layers:
                bias = layer.bias.value.detach()
                self.weights += [layer.kernel.value.detach().t().contiguous(),
                                 layer.recurrent_kernel.value.detach().t().contiguous(), bias, torch.zeros_like(bias)]
            self.out_kernel = model.output_layer.kernel.value.detach()
            self.out_bias = model.output_layer.bias.value.detach()
        self.layers = len(model.lstm_layers)
        self.units = model.hidden_size

    def step(self, ids, state=None):
        """ids: (1, time) long tensor -> (logits of the last position (vocab,), state)."""
        import torch

        if state is None:
            zeros = torch.zeros(self.layers, ids.shape[0], self.units)
            state = (zeros, zeros)
        out, h, c = torch.lstm(self.embedding[ids], state, self.weights, True, self.layers, 0.0, False, False,
                               True)
        return torch.addmm(self.out_bias, out[:, -1], self.out_kernel)[0], (h, c)

    def predict_next_probabilities(self, ids):
        import torch

        with torch.no_grad():
            return torch.softmax(self.step(ids)[0], -1)

    def generate_greedy(self, ids, words):
        import torch

        with torch.no_grad():
            logits, state = self.step(ids)
            out = []
            index = logits.argmax()
            for _ in range(words):
                out.append(int(index))
                logits, state = self.step(index.view(1, 1), state)
                index = logits.argmax()
        return out


def generate_without_keras_call(model, ids, words):
    """Intermediate prototype: the per-word step of LanguageModel.generate with Keras layer __call__ bypassed
    (embedding gather, torch_backend.fused_lstm per layer, addmm) but still converting weights on every call
    (fused_lstm's kernel.t().contiguous()) and still moving float64 logits to numpy for the sampler."""
    import torch

    from lstmlm import torch_backend

    def step(x, states):
        x = model.embedding.embeddings.value[x]
        new_states = []
        for layer, (h, c) in zip(model.lstm_layers, states):
            x, h, c = torch_backend.fused_lstm(x, h, c, layer.kernel.value, layer.recurrent_kernel.value,
                                               layer.bias.value, False)
            new_states.append((h, c))
        logits = torch.addmm(model.output_layer.bias.value, x[:, -1], model.output_layer.kernel.value)
        return logits[0].double().numpy(), new_states

    with torch.no_grad():
        states = [(torch.zeros(1, model.hidden_size), torch.zeros(1, model.hidden_size)) for _ in model.lstm_layers]
        logits, states = step(torch.as_tensor(ids)[None], states)
        out = []
        for _ in range(words):
            index = int(np.argmax(logits))
            out.append(index)
            logits, states = step(torch.tensor([[index]]), states)
    return out


def _interleaved(functions, calls):
    """Median ms of each function over `calls` rounds, the functions interleaved within each round."""
    times = {name: [] for name in functions}
    for name, fn in functions.items():  # warm-up
        fn()
    for _ in range(calls):
        for name, fn in functions.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: round(1000 * statistics.median(values), 3) for name, values in times.items()}


def inference_benchmark(config_name="tutorial", calls=50, words=200, generations=3, log=print):
    import torch
    from keras import ops

    import reference_pytorch
    from lstmlm.language_model import load

    with tempfile.TemporaryDirectory() as directory:
        make_run_directory(directory, config_name)
        lm = load(directory)
    model = lm.model
    rng = np.random.default_rng(SEED)
    p = 1.0 / np.arange(1, VOCABULARY - 1)
    prompt_ids = rng.choice(VOCABULARY - 2, size=30, p=p / p.sum()) + 2
    prompt = " ".join(lm.vocabulary.words[i] for i in prompt_ids)
    ids = lm.encode_prompt(prompt)[0]  # <eos> + the 30 words: 31 positions
    x_long = torch.tensor([ids])
    x_keras = ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)[None, :])
    reference = reference_pytorch.copy_from_lstmlm(reference_pytorch.build(lm.config, VOCABULARY), model).eval()
    fast = FastInference(model)

    def keras_forward_softmax_last():
        with torch.no_grad():
            logits, _ = model.call_with_states(x_keras, None, training=False)
            return torch.softmax(logits[0, -1], -1)

    def keras_layers_last_only():  # Keras layer calls, softmax layer on the last position only
        with torch.no_grad():
            h = model.embedding(x_keras)
            for layer in model.lstm_layers:
                h, _ = layer(h, training=False)
            return torch.softmax(model.output_layer(h[:, -1]), -1)[0]

    def torch_all():
        with torch.no_grad():
            return reference.next_word_probabilities(x_long, last_only=False)

    def torch_last():
        with torch.no_grad():
            return reference.next_word_probabilities(x_long, last_only=True)

    functions = {
        "lstmlm predict_next (top 5, as shipped)": lambda: lm.predict_next(prompt, top_k=5),
        "lstmlm model.call_with_states + softmax of last position": keras_forward_softmax_last,
        "prototype: Keras layers, softmax layer on last position only": keras_layers_last_only,
        "prototype: cached torch-layout weights, one torch.lstm, last position only":
            lambda: fast.predict_next_probabilities(x_long),
        "plain PyTorch, softmax layer at every position": torch_all,
        "plain PyTorch, last position only": torch_last,
    }
    # Same model, same numbers: check every path gives the same distribution.
    shipped = torch.as_tensor(np.array([w["probability"] for w in lm.predict_next(prompt, top_k=5)["words"]]))
    top5 = torch_last().topk(5)
    agreement = {name: float((fn().double() - torch_last().double()).abs().max())
                 for name, fn in functions.items() if not name.startswith("lstmlm predict_next")}
    agreement["lstmlm predict_next (top 5, as shipped)"] = float((shipped - top5.values.double()).abs().max())
    log(f"  next-word latency, {calls} interleaved calls")
    latency = _interleaved(functions, calls)

    log(f"  generation, {words} words x {generations}")
    generators = {
        "lstmlm generate (temperature 0, as shipped)":
            lambda: lm.generate(prompt, words=words, temperature=0)["words"],
        "prototype: no Keras __call__, weights still transposed per call":
            lambda: generate_without_keras_call(model, ids, words),
        "prototype: cached torch-layout weights, torch argmax": lambda: fast.generate_greedy(x_long, words),
        "plain PyTorch greedy": lambda: reference.generate_greedy(x_long, words),
    }
    outputs = {name: fn() for name, fn in generators.items()}
    reference_ids = outputs["plain PyTorch greedy"]
    same = {}
    for name, produced in outputs.items():
        produced_ids = [lm.vocabulary.index[w] for w in produced] if isinstance(produced[0], str) else produced
        same[name] = sum(a == b for a, b in zip(produced_ids, reference_ids)) / words
    generation_ms = _interleaved(generators, generations)
    generation = {name: {"seconds": round(ms / 1000, 3), "words_per_second": round(words / ms * 1000, 1),
                         "ms_per_word": round(ms / words, 3), "same_words_as_pytorch": same[name]}
                  for name, ms in generation_ms.items()}
    return {"config": config_name, "prompt_words": 30, "positions": len(ids), "calls": calls,
            "latency_ms": latency, "max_abs_probability_difference_vs_pytorch": agreement,
            "generation_words": words, "generation_runs": generations, "generation": generation}


# ---- memory ------------------------------------------------------------------------------------------------------
def _current_rss_mb():
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _high_water_rss_mb():
    """This process's peak RSS since exec (VmHWM). getrusage's ru_maxrss is NOT reset by exec on Linux: a child
    started from a big parent reports at least the parent's peak, so it is recorded but VmHWM is the figure."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(kind, config_name, steps):
    """Run in a fresh process: import, build, train `steps` steps, report RSS."""
    if kind == "pytorch":
        import torch  # noqa: F401

        import reference_pytorch  # noqa: F401  (and no Keras: see LIGHT_CONFIGS)
    else:
        import lstmlm  # noqa: F401
    after_import = _current_rss_mb()
    trainer = make_trainer(kind, config_name)
    for x, y in zipf_batches(steps, BATCH, trainer.config.num_steps):
        trainer.step(x, y)
    return {"variant": kind, "config": config_name, "steps": steps, "keras_imported": "keras" in sys.modules,
            "rss_after_imports_mb": round(after_import, 1), "rss_at_end_mb": round(_current_rss_mb(), 1),
            "peak_rss_mb": round(_high_water_rss_mb(), 1),
            "getrusage_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def memory_benchmark(kinds, config_name="tutorial", steps=8, log=print):
    out = {}
    for kind in kinds:
        log(f"  peak RSS: {kind} ({config_name}, {steps} steps, fresh process)")
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", kind,
                               "--config", config_name, "--steps", str(steps)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out[kind] = {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
            continue
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ---- profiler and micro-benchmarks ---------------------------------------------------------------------------------
def profile_training(kind, config_name, steps=3, warmup=2, top=12):
    import torch
    from torch.profiler import ProfilerActivity, profile

    trainer = make_trainer(kind, config_name)
    batches = zipf_batches(warmup + steps, BATCH, trainer.config.num_steps, seed=SEED + 1)
    for x, y in batches[:warmup]:
        trainer.step(x, y)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches[warmup:]:
            trainer.step(x, y)
    wall = (time.perf_counter() - started) / steps
    events = list(prof.key_averages())
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    del torch
    return {"variant": trainer.name, "config": config_name, "steps": steps,
            "wall_ms_per_step_under_profiler": round(1000 * wall, 1),
            "self_cpu_ms_per_step": round(total / 1000 / steps, 1),
            "profiler_events_per_step": round(sum(e.count for e in events) / steps),
            "top": [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
                     "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
                     "share": round(e.self_cpu_time_total / total, 3)} for e in events[:top]]}


def micro_benchmarks(calls=30):
    """Costs inside lstmlm's tutorial-size training step that the profiler points at, each timed alone."""
    import keras
    import torch

    from lstmlm.regularization import dropout as keras_dropout

    results = {}
    logits = torch.randn(600, VOCABULARY)
    y = torch.randint(0, VOCABULARY, (600,))
    kernel = torch.randn(500, 2000, requires_grad=True)
    x = torch.randn(20, 30, 500, requires_grad=True)
    seed = keras.random.SeedGenerator(1)

    def transpose_fwd_bwd():  # what fused_lstm does to both kernels of both layers, forward and backward
        ts = [kernel.t().contiguous() for _ in range(4)]
        torch.autograd.backward(ts, [torch.ones_like(t) for t in ts])

    def keras_dropout_fwd_bwd():
        keras_dropout(x, 0.5, seed).sum().backward()

    def torch_dropout_fwd_bwd():
        torch.nn.functional.dropout(x, 0.5, training=True).sum().backward()

    functions = {
        "train accuracy: argmax over (600, 10000) logits + compare": lambda: (logits.argmax(-1) == y).sum(),
        "cross-entropy forward on (600, 10000) logits": lambda: torch.nn.functional.cross_entropy(logits, y),
        "4x kernel.t().contiguous() (500x2000) forward + backward": transpose_fwd_bwd,
        "seeded keras.random.dropout 0.5 on (20, 30, 500), fwd + bwd": keras_dropout_fwd_bwd,
        "torch.nn.functional.dropout 0.5 on (20, 30, 500), fwd + bwd": torch_dropout_fwd_bwd,
    }
    results["training_pieces_ms"] = _interleaved(functions, calls)

    # Keras layer __call__ overhead at batch 1, one word: what each generation step pays per layer.
    from lstmlm.model import build_model

    model = build_model(config_for("tutorial"), VOCABULARY)
    ids = keras.ops.convert_to_tensor(np.array([[5]], dtype=np.int32))
    h = torch.zeros(1, 1, 500)
    emb = model.embedding.embeddings.value
    w, b = model.output_layer.kernel.value, model.output_layer.bias.value
    with torch.no_grad():
        per_layer = {
            "Embedding __call__ (1x1)": lambda: model.embedding(ids),
            "embedding gather in torch (1x1)": lambda: emb[torch.tensor([[5]])],
            "Dense(10000) __call__ on (1, 1, 500)": lambda: model.output_layer(h),
            "torch.addmm with the same weights": lambda: torch.addmm(b, h[:, -1], w),
            "LSTM layer __call__, 1 step": lambda: model.lstm_layers[0](h, training=False),
            "torch.lstm 1 step, weights pre-transposed": _lstm_pretransposed(model.lstm_layers[0], h),
            "model.call_with_states (1 word, all layers)": lambda: model.call_with_states(ids, None, training=False),
        }
        results["batch1_one_word_ms"] = _interleaved(per_layer, calls * 3)
    return results


def _lstm_pretransposed(layer, h):
    import torch

    weights = [layer.kernel.value.detach().t().contiguous(), layer.recurrent_kernel.value.detach().t().contiguous(),
               layer.bias.value.detach(), torch.zeros_like(layer.bias.value.detach())]
    zeros = torch.zeros(1, 1, layer.units)
    return lambda: torch.lstm(h, (zeros, zeros), weights, True, 1, 0.0, False, False, True)


# ---- modes -------------------------------------------------------------------------------------------------------
def run_quick(warmup=2, steps=5, repeats=2, log=print):
    """The CI smoke check's core: small config, lstmlm's default step vs plain PyTorch, interleaved."""
    env = environment()
    training = time_training("small", ["lstmlm", "pytorch"], warmup, steps, repeats, log=log)
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return {"mode": "quick", "environment": env, "training": {"small": training},
            "ratio_lstmlm_to_pytorch": training["variants"]["lstmlm"]["ratio_to_pytorch"]}


def run_prototypes(args, log=print):
    """Training-only comparison of prototype train-step changes against lstmlm's default and plain PyTorch."""
    env = environment()
    kinds = ["lstmlm", "pytorch", "lstmlm-proposed", "lstmlm-no-mkldnn", "pytorch-no-mkldnn"]
    result = {"mode": "prototypes", "environment": env, "training": {}, "note": args.note}
    result["training"]["small"] = time_training("small", kinds, args.warmup, args.steps_small, args.repeats, log=log)
    result["training"]["tutorial"] = time_training("tutorial", kinds, args.warmup, args.steps, args.repeats, log=log)
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def run_full(args, log=print):
    env = environment()
    started = time.perf_counter()
    result = {"mode": "full", "environment": env, "training": {}, "note": args.note}
    result["memory"] = memory_benchmark(["lstmlm", "pytorch", "keras-tutorial"], "tutorial", args.memory_steps,
                                        log=log)  # first, while this process is small
    result["training"]["tutorial"] = time_training(
        "tutorial", ["lstmlm", "pytorch", "lstmlm-unfused", "keras-tutorial"], args.warmup, args.steps,
        args.repeats, log=log)
    result["training"]["small"] = time_training(
        "small", ["lstmlm", "pytorch", "lstmlm-unfused"], args.warmup, args.steps_small, args.repeats, log=log)
    result["inference"] = inference_benchmark("tutorial", calls=args.calls, words=args.words, log=log)
    if args.small_inference:
        result["inference_small"] = inference_benchmark("small", calls=args.calls, words=args.words, log=log)
    if not args.no_profile:
        log("  profiler")
        result["profile"] = {f"{kind} {config}": profile_training(kind, config, steps=args.profile_steps)
                             for config in ("tutorial", "small") for kind in ("lstmlm", "pytorch")}
        log("  micro-benchmarks")
        result["micro"] = micro_benchmarks()
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# ---- output --------------------------------------------------------------------------------------------------------
def markdown(result):
    env = result["environment"]
    lines = [f"# lstmlm throughput ({result['mode']} run)", "",
             f"CPU {env['cpu']}, {env['logical_cpus']} logical CPUs, torch threads {env['torch_threads']}; "
             f"flags: {', '.join(f for f, on in env['cpu_flags'].items() if on)}; "
             f"torch {env['torch']}, keras {env['keras']} ({env['keras_backend']}), python {env['python']}; "
             f"precision {env['precision']} (bf16 supported: {env['bfloat16_supported']}); load average "
             f"{env['load_average_start']} at start, {env.get('load_average_end')} at end.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    for config, block in result["training"].items():
        lines += [f"## Training, {config} config ({block['hidden_size']}x2, {block['num_steps']} steps, batch "
                  f"{block['batch_size']}, {block['optimizer']}, clip {block['clip_norm']}, dropout "
                  f"{block['dropout']}, state carried: {block['state_carried']}, loss summed over time: {block.get('sum_over_time')})", "",
                  "| variant | ms/step (median) | per-round medians | tokens/s | vs plain PyTorch | "
                  "loss first → last step (first 3 → last 3 mean) |", "|---|---|---|---|---|---|"]
        for row in block["variants"].values():
            lines.append(f"| {row['variant']} | {row['ms_per_step']:.1f} | "
                         f"{', '.join(f'{v:.0f}' for v in row['round_medians_ms'])} | "
                         f"{row['tokens_per_second']:,.0f} | {row.get('ratio_to_pytorch', float('nan')):.2f}x | "
                         f"{row['loss_first_step']:.3f} → {row['loss_last_step']:.3f} "
                         f"({row['loss_first3_mean']:.3f} → {row['loss_last3_mean']:.3f}"
                         f"{'' if row['loss_falls'] else ', DID NOT FALL'}) |")
        lines.append("")
    for key in ("inference", "inference_small"):
        if key not in result:
            continue
        inf = result[key]
        lines += [f"## Next-word latency, {inf['config']}-size model, batch 1, {inf['prompt_words']}-word prompt "
                  f"({inf['positions']} positions with the leading <eos>), median of {inf['calls']}", "",
                  "| path | ms | max abs prob. diff vs PyTorch |", "|---|---|---|"]
        for name, ms in inf["latency_ms"].items():
            lines.append(f"| {name} | {ms:.2f} | "
                         f"{inf['max_abs_probability_difference_vs_pytorch'].get(name, float('nan')):.1e} |")
        lines += ["", f"## Greedy generation, {inf['config']}-size model, batch 1, {inf['generation_words']} words, "
                      f"median of {inf['generation_runs']}", "",
                  "| path | words/s | ms/word | same words as PyTorch |", "|---|---|---|---|"]
        for name, row in inf["generation"].items():
            lines.append(f"| {name} | {row['words_per_second']:,.0f} | {row['ms_per_word']:.2f} | "
                         f"{row['same_words_as_pytorch']:.0%} |")
        lines.append("")
    if "memory" in result:
        lines += ["## Peak memory, tutorial-config training (fresh process each)", "",
                  "| variant | RSS after imports MB | peak RSS MB (VmHWM) | ru_maxrss MB |", "|---|---|---|---|"]
        for kind, row in result["memory"].items():
            if "error" in row:
                lines.append(f"| {kind} | error: {row['error']} | |")
            else:
                lines.append(f"| {kind} | {row['rss_after_imports_mb']:.0f} | {row['peak_rss_mb']:.0f} | "
                             f"{row['getrusage_maxrss_mb']:.0f} |")
        lines.append("")
    for name, prof in result.get("profile", {}).items():
        lines += [f"## Profile: {name} — {prof['self_cpu_ms_per_step']:.0f} ms self CPU per step, "
                  f"{prof['profiler_events_per_step']} profiler events per step", "",
                  "| op | calls/step | self CPU ms/step | share |", "|---|---|---|---|"]
        for row in prof["top"]:
            lines.append(f"| {row['op']} | {row['calls_per_step']:g} | {row['self_cpu_ms_per_step']:.2f} | "
                         f"{row['share']:.1%} |")
        lines.append("")
    if "micro" in result:
        lines += ["## Micro-benchmarks (median ms)", "", "| piece | ms |", "|---|---|"]
        for group in result["micro"].values():
            for name, ms in group.items():
                lines.append(f"| {name} | {ms:.3f} |")
        lines.append("")
    return "\n".join(lines)


def write(result, prefix):
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(f"{prefix}.md").write_text(markdown(result) + "\n", encoding="utf-8")
    return Path(f"{prefix}.json"), Path(f"{prefix}.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmarks-latest", help="output path prefix (.json and .md)")
    parser.add_argument("--quick", action="store_true", help="CI smoke check: small config, < 60 s")
    parser.add_argument("--prototypes", action="store_true",
                        help="training only: lstmlm vs prototype train-step changes (native dropout, no argmax, "
                             "oneDNN off) and plain PyTorch")
    parser.add_argument("--min-ratio", type=float, default=0.5,
                        help="--quick fails if lstmlm tokens/s < this x plain PyTorch (default 0.5)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round (tutorial)")
    parser.add_argument("--steps-small", type=int, default=15, help="timed steps per variant per round (small)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=50, help="next-word latency calls")
    parser.add_argument("--words", type=int, default=200, help="generated words per generation run")
    parser.add_argument("--memory-steps", type=int, default=8, help="training steps in each memory subprocess")
    parser.add_argument("--small-inference", action="store_true", help="also time inference for the small size")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled training steps per variant")
    parser.add_argument("--no-profile", action="store_true", help="skip torch.profiler and micro-benchmarks")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="tutorial", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.environ["KERAS_BACKEND"] != "torch":
        parser.error(f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}; this benchmark needs 'torch'")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.config, args.steps)))
        return 0

    def log(line):
        print(line, file=sys.stderr, flush=True)

    if args.quick:
        result = run_quick(warmup=2, steps=4, repeats=2, log=log)
    elif args.prototypes:
        result = run_prototypes(args, log=log)
    else:
        result = run_full(args, log=log)
    json_path, md_path = write(result, args.out)
    log(f"wrote {json_path} and {md_path}")
    print(markdown(result))
    if args.quick:
        ratio = result["ratio_lstmlm_to_pytorch"]
        if ratio < args.min_ratio:
            log(f"FAIL: lstmlm trains at {ratio:.2f}x plain PyTorch (< {args.min_ratio})")
            return 1
        log(f"ok: lstmlm trains at {ratio:.2f}x plain PyTorch (>= {args.min_ratio})")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
