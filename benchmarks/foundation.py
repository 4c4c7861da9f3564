"""Foundation figures: `make setup` from nothing and when set up, broker start-to-ready, `make test`.

    .venv/bin/python benchmarks/foundation.py [--fresh-setup] [--make-test] [--starts 3]

--fresh-setup clones the repository into a temporary folder and times `make setup` there (a new .venv;
pip's download cache, if any, is used as on any machine). --make-test times `make test` in this checkout.
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.kafka import broker, distribution  # noqa: E402


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def broker_start_to_ready(runs: int) -> list[float]:
    """Seconds from `Broker.start()` on a new data folder (port check, storage format, JVM launch) to the
    first metadata answer."""
    dist = distribution.fetch()
    out = []
    for _ in range(runs):
        data = Path(tempfile.mkdtemp(prefix="kafka-bench-"))
        cfg = broker.BrokerConfig(data_dir=data, port=broker.free_port(), controller_port=broker.free_port(),
                                  security="plaintext")
        t0 = time.monotonic()
        node = broker.Broker(cfg, dist)
        node.start()
        out.append(time.monotonic() - t0)
        node.stop()
        shutil.rmtree(data, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fresh-setup", action="store_true")
    ap.add_argument("--make-test", action="store_true")
    ap.add_argument("--starts", type=int, default=3)
    args = ap.parse_args()
    result: dict[str, object] = {}

    if args.fresh_setup:
        with tempfile.TemporaryDirectory(prefix="fresh-clone-") as tmp:
            clone = Path(tmp) / "repo"
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
            result["setup_fresh_s"] = round(timed(["make", "setup"], clone), 1)
            result["setup_noop_s"] = round(timed(["make", "setup"], clone), 3)
    else:
        timed(["make", "setup"], REPO)
        result["setup_noop_s"] = round(timed(["make", "setup"], REPO), 3)

    starts = broker_start_to_ready(args.starts)
    result["broker_start_to_ready_s"] = round(statistics.median(starts), 2)
    result["broker_start_to_ready_runs"] = [round(s, 2) for s in starts]
    if args.make_test:
        result["make_test_s"] = round(timed(["make", "test"], REPO), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
