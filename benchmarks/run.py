"""Re-create one benchmark's committed results from this checkout: ``python benchmarks/run.py NAME [options]``
(``make bench NAME=...``). A folder with its own ``run.py`` runs that; a folder whose ``config.yaml`` names
``setup: OTHER`` (a later round sharing OTHER's setting) runs OTHER's ``run.py --folder`` on it; a folder with only a
``config.yaml`` runs ``run_methods.py`` on it. Extra options (``--device cuda``) pass through."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: the CPU kernels' instruction set, pinned as the Makefile does (before torch loads) so that a results file
#: re-creates bit for bit on AVX2 and AVX-512 machines alike (STRICT: and wherever MKL's operands sit in memory); a
#: value already in the environment wins
PORTABLE_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: benchmarks that measure what a request costs (seconds, memory) run on the kernels torch picks for the CPU, as a
#: user's run does, the Makefile's pins removed: pinned to AVX2 on an AVX-512 CPU with bf16 instructions, a ViT-Ti bf16
#: step took 14.18 s against 0.69 s unpinned on the same machine (README "Benchmarks"); timings never re-create bit for
#: bit
COST_BENCHMARKS = ("scale",)


def unpin_cpu_kernels() -> None:
    """Remove PORTABLE_CPU's variables (COST_BENCHMARKS), the Makefile's exported ones included."""
    for key in PORTABLE_CPU:
        os.environ.pop(key, None)


def pin_cpu_kernels() -> None:
    """Set PORTABLE_CPU's variables that are unset or empty, on a CPU with AVX2 only (elsewhere torch would warn, or
    run instructions the CPU lacks)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return
    if "avx2" in flags:
        for key, value in PORTABLE_CPU.items():
            if not os.environ.get(key):
                os.environ[key] = value


def _setup(folder: Path) -> str | None:
    """The benchmark whose runner and setting ``folder``'s config shares (its ``setup:``), if it names one."""
    import yaml

    config = folder / "config.yaml"
    return (yaml.safe_load(config.read_text()) or {}).get("setup") if config.is_file() else None


def main() -> int:
    names = sorted(p.name for p in HERE.iterdir() if p.is_dir() and ((p / "config.yaml").is_file() or
                                                                     (p / "run.py").is_file()))
    if len(sys.argv) < 2 or sys.argv[1] not in names:
        print(f"usage: python benchmarks/run.py NAME [options]; NAME is one of: {', '.join(names)}", file=sys.stderr)
        return 2
    name, extra = sys.argv[1], sys.argv[2:]
    if name in COST_BENCHMARKS:
        unpin_cpu_kernels()
    else:
        pin_cpu_kernels()
    folder = HERE / name
    sys.path.insert(0, str(HERE))
    setup = _setup(folder)
    if (folder / "run.py").is_file():
        sys.argv = [str(folder / "run.py"), *extra]
        runpy.run_path(str(folder / "run.py"), run_name="__main__")
    elif setup:
        sys.argv = [str(HERE / setup / "run.py"), "--folder", str(folder), *extra]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.argv = [str(HERE / "run_methods.py"), str(folder), *extra]
        runpy.run_path(str(HERE / "run_methods.py"), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
