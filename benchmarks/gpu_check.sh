#!/usr/bin/env bash
# The first check to run when an NVIDIA GPU is at hand (issue 19, item 7). Nothing here has run on a GPU yet:
# lstmlm has never trained on CUDA, and its DDP path has only run on gloo (CPU).
#
#     OUT=gpu-check bash benchmarks/gpu_check.sh          # PYTHON=... to choose the interpreter
#
# Three steps, each under its own `timeout` (the caps add up to 9.5 minutes; expect about 6):
#   1. CUDA smoke: `lstmlm train --preset small` for 30 s on bundled PTB; config.json must say device cuda.
#   2. DDP / NCCL smoke: the same as one rank started by torch's launcher (`python -m torch.distributed.run
#      --standalone --nproc-per-node 1 -m lstmlm train ...`, what `lstmlm train --processes N` runs for N >= 2;
#      `--processes 1` trains in-process without a process group); config.json must say backend nccl.
#   3. Speed: one `medium` epoch (2x650) within a 3.5-minute budget; its training tokens/s from history.csv.
# Writes $OUT/gpu-check.json (GPU name, driver, torch and CUDA versions, each step's result, command and
# seconds), $OUT/gpu-check.log (everything printed) and each step's run directory. Exits non-zero at the first
# step that fails, after writing what it measured so far.
set -euo pipefail

OUT=${OUT:-./gpu-check}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu-check.log"
STEPS="$OUT/steps.jsonl"   # one JSON line per finished step, gathered into gpu-check.json at the end
: > "$STEPS"
export KERAS_BACKEND=torch
if [[ -z "${PYTHONPATH:-}" ]] && ! "$PYTHON" -c "import lstmlm" 2>/dev/null; then
    export PYTHONPATH="$HERE/../src"   # a checkout without `pip install -e .`
fi

say() { printf '[gpu_check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG"; }

# write_summary STATUS: gpu-check.json from the GPU's description and the steps so far (runs on exit too).
write_summary() {
    "$PYTHON" - "$OUT" "$1" "$HERE" <<'PY'
import json, os, platform, subprocess, sys
from pathlib import Path

out, status = Path(sys.argv[1]), sys.argv[2]
gpu = {}
try:
    import torch
    gpu = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        gpu.update(name=torch.cuda.get_device_name(0), count=torch.cuda.device_count(),
                   bf16_supported=torch.cuda.is_bf16_supported(),
                   memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
except Exception as error:  # the summary must still be written
    gpu["error"] = f"{type(error).__name__}: {error}"
try:
    gpu["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError) as error:
    gpu["nvidia_smi"] = f"unavailable: {error}"
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
commit = subprocess.run(["git", "-C", sys.argv[3], "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip() or None
summary = {"status": status, "gpu": gpu, "steps": steps, "host": platform.node(), "platform": platform.platform(),
           "load_average": [round(x, 2) for x in os.getloadavg()], "git_commit": commit}
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
}
on_exit() {
    local status=$?
    if (( status != 0 )); then
        say "FAILED (exit $status); what was measured so far follows"
        write_summary failed || true
    fi
}
trap on_exit EXIT

# record STEP RUN_DIR SECONDS EXPECT: check a run directory and append the step's line to steps.jsonl.
# EXPECT is "device=cuda" or "backend=nccl"; a mismatch fails the step.
record() {
    "$PYTHON" - "$@" "$STEPS" <<'PY'
import csv, json, math, sys
from pathlib import Path

step, run_dir, seconds, expect, steps = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
info = json.loads((run_dir / "config.json").read_text())
with open(run_dir / "history.csv", newline="") as handle:
    history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
if not history:
    sys.exit(f"{step}: no epoch finished in {run_dir}")
last = history[-1]
values = {"step": step, "run_dir": str(run_dir), "command": info.get("command"), "device": info.get("device"),
          "precision": info.get("precision"), "distributed": info.get("distributed"),
          "parameters": info.get("parameters"), "seconds": round(seconds, 1), "epochs_validated": len(history),
          "train_tokens": int(sum(row["train_tokens"] for row in history)),
          "tokens_per_second": round(last["tokens_per_second"], 1), "train_loss": last["train_loss"],
          "valid_loss": last["valid_loss"], "valid_perplexity": last["valid_perplexity"]}
key, wanted = expect.split("=")
got = info.get("device") if key == "device" else (info.get("distributed") or {}).get("backend")
problems = [] if got == wanted else [f"{key} is {got!r}, expected {wanted!r}"]
if not all(math.isfinite(values[k]) for k in ("train_loss", "valid_loss")):
    problems.append("a non-finite loss")
values["ok"] = not problems
with open(steps, "a") as handle:
    handle.write(json.dumps(values) + "\n")
print(json.dumps(values, indent=2))
if problems:
    sys.exit(f"{step}: " + "; ".join(problems))
PY
}

# step NAME TIMEOUT_S EXPECT -- COMMAND...: run COMMAND --out $OUT/NAME, time it and record the run directory.
step() {
    local name=$1 cap=$2 expect=$3
    shift 4
    local run_dir="$OUT/$name"
    rm -rf "$run_dir"
    say "step $name (at most ${cap} s): $* --out $run_dir"
    local started=$SECONDS
    timeout --signal=INT --kill-after=30 "$cap" "$@" --out "$run_dir" 2>&1 | tee -a "$LOG"
    record "$name" "$run_dir" "$((SECONDS - started))" "$expect" | tee -a "$LOG"
}

say "output: $OUT; python: $("$PYTHON" -c 'import sys; print(sys.executable)')"
nvidia-smi 2>&1 | tee -a "$LOG" || say "nvidia-smi failed (continuing: torch decides)"
"$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'available', ok); sys.exit(0 if ok else 'torch sees no CUDA GPU')" 2>&1 | tee -a "$LOG"

SMOKE=(--preset small --epochs 1 --max-minutes 0.5 --no-report)
step cuda-smoke 120 device=cuda -- "$PYTHON" -m lstmlm train "${SMOKE[@]}"
step ddp-nccl-smoke 150 backend=nccl -- "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 \
    -m lstmlm train "${SMOKE[@]}"
step medium-epoch 300 device=cuda -- "$PYTHON" -m lstmlm train --preset medium --epochs 1 --max-minutes 3.5 --no-report

write_summary ok
say "done: $OUT/gpu-check.json"
