"""Benchmark: automatic rollback of a bad-but-valid model version by the live monitor.

Runs the rollback scenario of tests/integration/test_monitor.py (a flight model trained on January, a second one on
shuffled labels published over it; February's flights scored and labelled as they stream; the monitor closes
windows of 500 labelled events) with ROLLBACK_REPORT pointing at a scratch file, so the scenario and its checks
exist once. Prints, last on stdout, one JSON object: rolled_back, detect_events (labelled events of the bad version
the decision was taken on), detect_s and restore_s (seconds from the bad version live on the scorer to the decision,
and to the previous version live again), label_lag_s (from the last label produced to the monitor having read
every label).

    .venv/bin/python benchmarks/rollback.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
TEST = ("tests/integration/test_monitor.py::"
        "test_a_bad_version_is_rolled_back_by_the_monitor_and_its_live_metrics_are_recorded")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rollback-") as scratch:
        report = Path(scratch) / "rollback.jsonl"
        run = subprocess.run([sys.executable, "-m", "pytest", TEST, "-p", "no:cacheprovider", "-q"], cwd=REPO,
                             env={**os.environ, "ROLLBACK_REPORT": str(report)}, stdout=sys.stderr,
                             stderr=subprocess.STDOUT, check=False)
        rows = [orjson.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    result = rows[-1] if rows else {"rolled_back": False}
    print(orjson.dumps({**result, "passed": run.returncode == 0}).decode())


if __name__ == "__main__":
    main()
