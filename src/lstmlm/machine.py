"""What this machine is: the CPU model and the instruction-set flags that decide which kernels run.

Every benchmark number and every run directory records this beside its results, because the same command runs
at different speeds (and with different precisions available) on an AVX2-only AMD Zen 3 and on an Intel Xeon
with AMX; numbers are compared only side by side on one machine.
"""

import functools
import os
import platform

# The flags that change what lstmlm can run or how fast: bfloat16 and int8 matrix units, vector widths.
NOTABLE_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16",
                 "amx_int8")


@functools.cache
def cpu_info():
    """{"model", "flags" (sorted notable flags present), "cores", "bfloat16"} from /proc/cpuinfo.

    Example:
        >>> info = cpu_info()
        >>> sorted(info) == ["bfloat16", "cores", "flags", "model"]
        True
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: no flags known
        pass
    return {"model": model, "flags": [flag for flag in NOTABLE_FLAGS if flag in flags],
            "cores": os.cpu_count() or 1, "bfloat16": "avx512_bf16" in flags or "amx_bf16" in flags}


def describe():
    """One line for logs and docs: 'Intel(R) Xeon(R) Processor, 2 cores, avx2 fma ... amx_bf16'."""
    info = cpu_info()
    return f"{info['model']}, {info['cores']} cores, flags: {' '.join(info['flags']) or 'none of note'}"
