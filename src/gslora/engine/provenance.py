"""Where a result comes from: code version (git commit), time and hardware, stamped on every results row."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from gslora.engine.ledger import now
from gslora.version import __version__, code_version


def hardware() -> str:
    """CPU model and core count with the vector instructions torch's kernels use (AVX2, AVX512: the same model name
    may have either, and they sum floats differently), GPU if any, torch version and its intra-op thread count (on a
    CPU the same code, config and seed give bit-identical weights only on the same instructions and thread count; the
    Makefile and benchmarks/run.py pin them to AVX2 on a CPU that has it). The MKL and oneDNN pins are named as the
    environment sets them, not as read back from those libraries."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    pins = "".join(f", {key}={os.environ[key]}" for key in ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA") if os.environ.get(key))
    return (f"{cpu} ({torch.backends.cpu.get_cpu_capability()}{pins}){gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def device_description(device: torch.device) -> str:
    """What measured a figure on ``device``: the GPU's name and torch version, or on a CPU ``hardware()``. Two figures
    of the same seeded computation agree bit for bit only where these descriptions do."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return hardware() if device.type == "cpu" else f"{device.type} on {hardware()}"


def stamp() -> dict[str, Any]:
    """``{"version", "commit", "time", "hardware"}`` for one results row."""
    return {"version": __version__, "commit": code_version(), "time": now(), "hardware": hardware()}
