"""The CPU a benchmark ran on, in words. Machines of one kind differ (some
with AVX-512, some without; llama.cpp's kernels and torch's differ with
them), so every result names its own."""
import os
import platform
from pathlib import Path


def cpu_description() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf8").splitlines()
    except OSError:
        info = []
    flags = " " + next((line.split(":", 1)[1] for line in info if line.startswith("flags")), "") + " "
    simd = "AVX-512" if " avx512f " in flags else "AVX2" if " avx2 " in flags else "no AVX2"
    return f"{platform.machine()} CPU ({simd}), {os.cpu_count()} cores"
