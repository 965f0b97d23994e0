"""Peak memory and torch.profiler's top ops of one training step, for benchmarks/throughput.py (`--memory-steps`,
`--profile`): each variant's peak RSS in a fresh process (`throughput.py --memory-child KIND` runs one), and the
ops that take a step's CPU time.
"""

import json
import resource
import subprocess
import sys
from pathlib import Path

from throughput import BATCH, LIGHT_CONFIGS, SEED, make_step, zipf_batches

THROUGHPUT = Path(__file__).resolve().parent / "throughput.py"


def _high_water_rss_mb():
    """This process's peak RSS since exec (VmHWM). getrusage's ru_maxrss is NOT reset by exec on Linux: a child
    started from a big parent reports at least the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(kind, config_name, steps):
    """Run in a fresh process: import, build, train `steps` steps, report the peak RSS."""
    if kind.startswith("pytorch"):
        import torch  # noqa: F401

        import reference_pytorch  # noqa: F401  (no Keras: see LIGHT_CONFIGS)
    else:
        import lstmlm  # noqa: F401
    after_imports = _high_water_rss_mb()
    step = make_step(kind, config_name)
    for x, y in zipf_batches(steps, BATCH, LIGHT_CONFIGS[config_name]["num_steps"]):
        step.step(x, y)
    return {"variant": step.name, "steps": steps, "keras_imported": "keras" in sys.modules,
            "peak_rss_after_imports_mb": round(after_imports, 1), "peak_rss_mb": round(_high_water_rss_mb(), 1)}


def memory_benchmark(kinds, config_name, steps, threads, log=print):
    out = {}
    for kind in kinds:
        log(f"  peak RSS: {kind} ({config_name}, {steps} steps, fresh process)")
        done = subprocess.run([sys.executable, str(THROUGHPUT), "--memory-child", kind,
                               "--config", config_name, "--memory-steps", str(steps), "--threads", str(threads)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out[kind] = {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def profile_training(kind, config_name, steps=3, warmup=2, top=15):
    """torch.profiler's ops by self CPU time over `steps` steps (wall-clock based: run it on a quiet machine)."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(kind, config_name)
    batches = zipf_batches(warmup + steps, BATCH, LIGHT_CONFIGS[config_name]["num_steps"], seed=SEED + 1)
    for x, y in batches[:warmup]:
        step.step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches[warmup:]:
            step.step(x, y)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {"variant": step.name, "config": config_name, "steps": steps,
            "self_cpu_ms_per_step": round(total / 1000 / steps, 1),
            "top": [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
                     "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
                     "share": round(e.self_cpu_time_total / total, 3)} for e in events[:top]]}
