"""Run several ``gslora`` command lines in one process and report each one's exit code and stderr as JSON.

Usage: python -m tests.cli_batch CASES.json  (a list of argument lists). Used by test_faults.py so that the
bad-input corpus goes through the real command line without paying the start-up of one process per case.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def main() -> int:
    from gslora.cli import main as gslora_main

    results = []
    for argv in json.loads(open(sys.argv[1]).read()):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = gslora_main(argv)
            except SystemExit as exc:  # argparse errors
                code = exc.code
        results.append({"argv": argv, "exit": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
