"""Benchmark: the fault tests of tests/integration/test_cluster_faults.py on a three-node cluster, as a table.

Runs that test module (the scenarios and their checks live there, once) with CLUSTER_FAULTS_REPORT pointing at a
scratch file, to which each test appends its figures: fault, mode, inputs, predictions, lost, duplicated,
recovery_s (the longest pause of the prediction stream after the fault), scorer_restarts. Prints the table on
stderr and, last on stdout, one JSON object: {"passed": bool, "rows": [...]}.

    .venv/bin/python benchmarks/cluster_faults.py [-k EXPR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("fault", "mode", "inputs", "predictions", "lost", "duplicated", "recovery_s", "scorer_restarts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=None, help="only the tests matching this pytest expression")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cluster-faults-") as scratch:
        report = Path(scratch) / "faults.jsonl"
        command = [sys.executable, "-m", "pytest", "tests/integration/test_cluster_faults.py", "-p", "no:cacheprovider",
                   "-q", *(["-k", args.k] if args.k else [])]
        run = subprocess.run(command, cwd=REPO, env={**os.environ, "CLUSTER_FAULTS_REPORT": str(report)},
                             stdout=sys.stderr, stderr=subprocess.STDOUT, check=False)
        rows = [orjson.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    print("\n".join(lines), file=sys.stderr)
    print(orjson.dumps({"passed": run.returncode == 0, "rows": rows}).decode())


if __name__ == "__main__":
    main()
