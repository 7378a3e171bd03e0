"""fashion_mnist_det's runner (../fashion_mnist_det/run.py) on this folder's config: results.json and report.md land
here.

Usage: python benchmarks/fashion_mnist_det_levers/run.py [--device ...] [--methods ...]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    sys.argv = [str(HERE.parent / "fashion_mnist_det" / "run.py"), "--folder", str(HERE), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
