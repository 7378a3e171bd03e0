"""The verification runner (../verification/run.py) on this folder's config: results.json and report.md land here.
Usage: python benchmarks/verification_validation/run.py [--device ...] [--report-only]"""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    sys.argv = [str(HERE.parent / "verification" / "run.py"), "--config", str(HERE / "config.yaml"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
