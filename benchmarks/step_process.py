"""One task of the retraining DAG in a process of its own, as an Airflow worker runs it: the same function of
``ml.airflow_tasks``, its settings from the environment (``settings_for_run``, the use case in USE_CASE), its
inputs the dicts the earlier tasks returned, read from ``<folder>/<task>.json``; its own is written to
``<folder>/<task>.json`` (without ``links``, which the DAG pushes as XComs). A ``StopRun`` writes
``{"stopped": kind, "reason": ...}`` there instead and exits with ``STOPPED``; any other error exits 1.

The task's process ends as Airflow's does (``airflow.sdk.execution_time.supervisor._fork_main``): its atexit
handlers run, then ``os._exit``, without the interpreter's teardown, which no Airflow task pays and which takes
seconds once TensorFlow, MLflow or Great Expectations are imported (docs/performance.md).

``measure`` starts the task's process from this small one and reaps it with ``os.wait4``: its wall seconds and
peak RSS (which covers the processes it starts and waits for, and the file pages they map) and the peak of its own
anonymous memory (``peak_anon_mb``: sampled, the task's process alone) go to ``<folder>/<task>.usage.json``. On Linux a
child's ru_maxrss starts at the peak RSS of the process it was spawned from (exec keeps the high-water mark of
the image it replaces), so the task is not spawned from a large benchmark process.

    python -m benchmarks.step_process measure|run <task> <folder> <run id>
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import orjson

STOPPED = 3
# task -> the earlier tasks whose returned dicts it takes, in the order of its function's arguments
INPUTS = {"snapshot": (), "validate": ("snapshot",), "train": (), "evaluate": ("train",),
          "register": ("train", "evaluate"), "publish": ("train", "evaluate", "register")}
WITH_RUN_ID = frozenset({"snapshot", "validate", "train"})


def run_task(task: str, folder: Path, run_id: str) -> dict:
    """Call ``task``'s function as the DAG does; the dict it returns. Raises StopRun, or whatever it raises."""
    from ml import airflow_tasks as steps

    inputs = [orjson.loads((folder / f"{name}.json").read_bytes()) for name in INPUTS[task]]
    fn = getattr(steps, task)
    out = fn(steps.settings_for_run({}), *([run_id] if task in WITH_RUN_ID else []), *inputs)
    out.pop("links", None)
    return out


def run(task: str, folder: Path, run_id: str) -> int:
    from ml.airflow_tasks import StopRun

    try:
        out = run_task(task, folder, run_id)
    except StopRun as e:
        (folder / f"{task}.json").write_bytes(orjson.dumps({"stopped": e.kind, "reason": str(e)}))
        logging.getLogger("step").warning("%s stopped the run: %s", task, e)
        return STOPPED
    (folder / f"{task}.json").write_bytes(orjson.dumps(out))
    # What the task imported bounds its RSS from below, whatever the data.
    logging.getLogger("step").info("%s done; imported: %s", task, ", ".join(
        m for m in ("tensorflow", "keras", "mlflow", "great_expectations", "pyarrow", "sklearn") if m in sys.modules))
    return 0


def measure(task: str, folder: Path, run_id: str) -> int:
    """Run the task in a child process; write its seconds and peak RSS; its exit code."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "benchmarks.step_process", "run", task,
                                          str(folder), run_id], os.environ)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))  # stopped: stop the task too
    anon = [0]
    done = threading.Event()
    sampler = threading.Thread(target=_sample_anon, args=(pid, anon, done), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(pid, 0)
    done.set()
    sampler.join()
    (folder / f"{task}.usage.json").write_bytes(orjson.dumps({
        "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "peak_anon_mb": round(anon[0] / 1024)}))
    return os.waitstatus_to_exitcode(status)


def _sample_anon(pid: int, peak: list[int], done: threading.Event, every_s: float = 0.1) -> None:
    """The highest ``RssAnon`` (kB) of process ``pid`` seen every ``every_s`` until ``done``: its own memory,
    without the file pages it maps (which RSS counts, and the kernel can drop), nor its children's."""
    while not done.wait(every_s):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
                        break
        except OSError:  # exited (or not Linux)
            return


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    mode, task, folder, run_id = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    if mode == "measure":
        sys.exit(measure(task, folder, run_id))
    code = run(task, folder, run_id)  # an error other than StopRun: its traceback, and the interpreter's exit 1
    atexit._run_exitfuncs()  # logging's flush among them
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
