"""The demo's report: live ROC AUC per month of the loop's predictions next to a frozen January model and a
gradient-boosted tree retrained monthly, the share of each month scored by each version, swaps, gate decisions,
throughput and swap gaps; written as summary.json, a PNG figure and a Markdown page.

Every number comes from the topics (``use_cases.flight_delay.live_metrics``: flights.predictions joined with
flights.completed, models, models.status) and the DAG runs the orchestrator recorded, so the report can be
rebuilt after the run; the tree's figures are computed from flights.completed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.monitoring.live_view import read_series, segments, serving_order
from ml.settings import LoopSettings
from ml.topic_reader import read_topic
from use_cases.flight_delay.contracts import FlightCompleted, FlightPrediction
from use_cases.flight_delay.live_metrics import label_predictions, metrics_by
from use_cases.flight_delay.use_case import FlightDelay

if TYPE_CHECKING:
    from ml.publish import ModelEnvelope

log = logging.getLogger(__name__)

SUMMARY, FIGURE, PAGE = "summary.json", "demo.png", "README.md"
GAP_CONTEXT_MS = 30_000  # the window before a swap whose batch intervals give its "typical gap"
# A swap happened while scoring when the old version still scored this shortly before it went live; a
# longer silence means the input had run dry (between two months) and the gap is idle time, not a pause.
BUSY_WITHIN_MS = 1_000


def _ms(ts: pd.Series) -> np.ndarray:
    """Aware timestamps as epoch milliseconds."""
    return ts.astype("datetime64[ms, UTC]").astype("int64").to_numpy()


def _num(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else round(float(x), 4)


def published(settings: LoopSettings) -> dict[int, ModelEnvelope]:
    """The loop's model versions on the model topic, read once for the whole report."""
    from ml.publish import read_envelopes

    envelopes = {e.model_version: e for e in read_envelopes(settings) if e.model_name == settings.model_name}
    if not envelopes:
        raise RuntimeError(f"no model on {settings.models_topic}: the loop published nothing to compare with")
    return envelopes


def version_probabilities(envelope: ModelEnvelope, rows: pd.DataFrame) -> np.ndarray:
    """P(delayed) of ``rows`` (flights.completed records) by a published version, with its own preprocessing
    through the training/scoring code path (``evaluation.score``)."""
    from ml.keras_models import from_bytes
    from use_cases.flight_delay.evaluation import score
    from use_cases.flight_delay.preprocessing import FlightPreprocessing

    return score(from_bytes(envelope.artifact()), FlightPreprocessing.from_dict(envelope.preprocessing), rows)


def tree_auc(settings: LoopSettings, labelled: pd.DataFrame, month: int) -> float | None:
    """ROC AUC on ``month`` of the baseline tree trained as the loop's run before it trains its network: on
    every earlier month's flights (``labelled``: one flights.completed record per flight) but the last
    ``holdout_days``, its own preprocessing fitted on them."""
    from ml.split import time_split
    from use_cases.flight_delay import baseline, preprocessing as prep
    from use_cases.flight_delay.evaluation import metrics

    uc = FlightDelay
    before, rows = labelled[labelled["month"] < month], labelled[labelled["month"] == month]
    if before.empty or rows.empty:
        return None
    earlier, _ = time_split(before, uc.time_order, days=settings.holdout_days)
    if earlier.empty or earlier[uc.label].nunique() < 2:
        return None
    fitted = prep.fit(earlier)
    tree = baseline.train_tree(fitted, earlier, earlier[uc.label].to_numpy(dtype=bool), seed=settings.seed)
    return metrics(rows[uc.label].to_numpy(dtype=bool), baseline.tree_probabilities(tree, fitted, rows))["roc_auc"]


def swap_gaps(predictions: pd.DataFrame) -> list[dict[str, Any]]:
    """For each change of the scoring version over time (a swap, a promotion, a rollback to an older one): the
    pause between the last prediction before the new version's first one and that first one (``gap_ms``), and
    the median interval between prediction batches in the ``GAP_CONTEXT_MS`` before (``typical_gap_ms``): a gap
    near the typical one means no visible pause. ``last_old_ms`` / ``first_new_ms`` are the two predictions'
    times (epoch ms). One scorer scores each batch with one version, so the batches' times tell the changes."""
    if predictions.empty:
        return []
    frame = pd.DataFrame({"t": _ms(predictions["scored_at"]),
                          "v": predictions["model_version"].to_numpy(dtype="int64")})
    batches = frame.groupby("t")["v"].max().sort_index()
    stamps, versions = batches.index.to_numpy(), batches.to_numpy()
    out = []
    for i in np.flatnonzero(versions[1:] != versions[:-1]) + 1:
        t_first, before = int(stamps[i]), stamps[:i]
        window = before[before >= t_first - GAP_CONTEXT_MS]
        typical = float(np.median(np.diff(window))) if len(window) > 1 else None
        out.append({"model_version": int(versions[i]), "previous_version": int(versions[i - 1]),
                    "gap_ms": int(t_first - before[-1]), "typical_gap_ms": typical, "last_old_ms": int(before[-1]),
                    "first_new_ms": t_first})
    return out


def throughput(predictions: pd.DataFrame) -> dict[str, Any]:
    """Predictions per second over the scoring span (at least 1 s), and the busiest second."""
    if predictions.empty:
        return {"predictions": 0, "seconds": 0.0, "per_s": None, "peak_per_s": None}
    t = _ms(predictions["scored_at"])
    span = max((t.max() - t.min()) / 1000, 1.0)  # a backlog scored in one batch counts as one second
    return {"predictions": int(len(t)), "seconds": round(float(span), 2), "per_s": round(len(t) / span, 1),
            "peak_per_s": int(np.bincount((t - t.min()) // 1000).max())}


def build(settings: LoopSettings, runs: Sequence[dict[str, Any]], out_dir: Path, *,
          wall_seconds: float | None = None) -> dict[str, Any]:
    """Read the topics, compute the report, write summary.json, the figure and the page into ``out_dir``.

    ``runs``: one record per DAG run (month, run_id, state, verdict, reasons, model_version, ...), as the
    orchestrator collected them. Returns the summary.
    """
    from ml.loop_view import read_status
    from use_cases.flight_delay.evaluation import metrics

    topics = FlightDelay.topics.resolved(settings)
    predictions = read_topic(settings, topics.predictions, FlightPrediction)
    predictions = predictions[predictions["model_name"] == settings.model_name]
    completed = read_topic(settings, topics.labels, FlightCompleted)
    labelled, duplicates = label_predictions(predictions, completed)
    flights = completed.drop_duplicates("flight_id", keep="last")
    by_id = flights.set_index("flight_id")
    envelopes = published(settings)
    # The first published version (the loop's January model, never replaced here) scores every flight.
    frozen_version = min(envelopes)
    labelled["probability_frozen"] = version_probabilities(envelopes[frozen_version],
                                                           by_id.loc[labelled["flight_id"]].reset_index())

    trained_through = {r["model_version"]: r["month"] for r in runs if r.get("model_version")}
    loop = metrics_by(labelled, "month").set_index("month")
    still = metrics_by(labelled, "month", probability="probability_frozen").set_index("month")
    by_version = metrics_by(labelled, "model_version").set_index("model_version")
    firsts = predictions.sort_values("scored_at").drop_duplicates("flight_id")
    months = []
    for month, row in loop.iterrows():
        group = labelled[labelled["month"] == month]
        counts = group["model_version"].value_counts().sort_index()
        versions = [int(v) for v in counts.index]
        # A month scored by a model that was trained on it (January's backlog waits for the January model)
        # measures fit, not prediction; one scored by the frozen version alone compares it with itself.
        # Both are shown but not counted in the comparison.
        in_sample = any(trained_through.get(v, 0) >= month for v in [*versions, frozen_version])
        compared = not in_sample and versions != [frozen_version]
        auc_loop, auc_frozen = _num(row["roc_auc"]), _num(still.loc[month, "roc_auc"])
        # The version trained on every earlier month (the run of the month before): what production would serve.
        previous = max((v for v, m in trained_through.items() if m == month - 1), default=None)
        auc_previous = None if previous is None else metrics(
            group["delayed"].to_numpy(dtype=bool),
            version_probabilities(envelopes[previous], by_id.loc[group["flight_id"]].reset_index()))["roc_auc"]
        months.append({
            "month": int(month), "predictions": int(row["predictions"]),
            "model_versions": versions, "predictions_by_version": {str(v): int(n) for v, n in counts.items()},
            "share_by_version": {str(v): round(n / counts.sum(), 4) for v, n in counts.items()},
            "previous_month_version": previous,
            "share_previous_month_version": None if previous is None
            else round(counts.get(previous, 0) / counts.sum(), 4),
            "auc_previous_month_version": _num(auc_previous),
            "auc_tree": _num(tree_auc(settings, flights, int(month))),
            "auc_loop": auc_loop, "auc_frozen": auc_frozen,
            "log_loss_loop": _num(row["log_loss"]), "log_loss_frozen": _num(still.loc[month, "log_loss"]),
            "positive_rate": _num(row["positive_rate"]), "in_sample": in_sample,
            "loop_beats_frozen": None if not compared or auc_loop is None or auc_frozen is None
            else auc_loop > auc_frozen,
        })
        rate = throughput(firsts[firsts["flight_id"].isin(group["flight_id"])])
        months[-1].update(scoring_seconds=rate["seconds"], per_s=rate["per_s"], peak_per_s=rate["peak_per_s"])
    live = [r for r in read_status(settings) if r.get("model_name") == settings.model_name]
    # The k-th time a version went live is its k-th change in the prediction stream.
    changes: dict[int, list[dict[str, Any]]] = {}
    if not predictions.empty:  # the first version to score went live before any prediction: no gap
        changes[int(predictions.sort_values("scored_at")["model_version"].iloc[0])] = [{}]
    for g in swap_gaps(predictions):
        changes.setdefault(g["model_version"], []).append(g)
    swaps = []
    for r in live:
        if r.get("status") != "live":
            continue
        pending = changes.get(r["model_version"], [])
        gap = pending.pop(0) if pending else {}
        live_ms = pd.Timestamp(r["at"]).value // 1_000_000 if r.get("at") else None
        swaps.append({"model_version": r["model_version"], "previous_version": r.get("previous_version"),
                      "live_at": r.get("at"), "scorer_id": r.get("scorer_id"),
                      "publication_to_live_ms": r.get("swap_ms"), "load_ms": r.get("load_ms"),
                      "gap_ms": gap.get("gap_ms"), "typical_gap_ms": gap.get("typical_gap_ms"),
                      "while_scoring": bool(gap and live_ms is not None
                                            and live_ms - gap["last_old_ms"] <= BUSY_WITHIN_MS)})
    busy = [w["gap_ms"] for w in swaps if w["while_scoring"]]
    stages = [{"status": r["status"], "model_version": r.get("model_version"), "at": r.get("at"),
               "reason": r.get("reason")} for r in live if r.get("status") in ("live", "shadow", "retired")]
    refused = [{"model_version": r.get("model_version"), "reason": f"{r.get('reason_kind')}: {r.get('reason')}",
                "scorer_id": r.get("scorer_id")} for r in live if r.get("status") == "rejected"]
    summary = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "topics": {"predictions": topics.predictions, "completed": topics.labels},
        "frozen_model_version": frozen_version,
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
        "prediction_records": int(len(predictions)), "labelled_flights": int(len(labelled)),
        "duplicate_predictions": int(duplicates),
        "months": months,
        "loop_beat_frozen_months": [m["month"] for m in months if m["loop_beats_frozen"]],
        "compared_months": [m["month"] for m in months if m["loop_beats_frozen"] is not None],
        "versions": [{"model_version": int(v), "trained_through_month": trained_through.get(int(v)),
                      "predictions": int(r["predictions"]), "auc": _num(r["roc_auc"])}
                     for v, r in by_version.iterrows()],
        "runs": list(runs), "swaps": swaps, "refused_by_scorer": refused,
        "max_swap_gap_ms_while_scoring": max(busy, default=None),
        "throughput": throughput(predictions),
        "stages": stages, "monitor": monitor_record(settings),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _figure(summary, predictions, out_dir / FIGURE, live_series(settings))
    (out_dir / PAGE).write_text(_page(summary))
    log.info("report in %s: %d months, %d prediction records, loop beat frozen in months %s", out_dir,
             len(months), len(predictions), summary["loop_beat_frozen_months"])
    return summary


def monitor_record(settings: LoopSettings) -> dict[str, Any]:
    """The live monitor's decisions (its decision log) and windows per version (MLflow), for the summary."""
    from ml.monitoring.settings import MonitorSettings

    path = MonitorSettings(use_case=settings.use_case, loop_data_dir=settings.loop_data_dir).decision_log
    decisions = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {"decisions": [{k: d.get(k) for k in ("at", "action", "model_version", "target_version", "metric", "value",
                                                  "reference", "events", "reason", "done")} for d in decisions],
            "windows": {str(s.version): {"champion": len(s.champion), "shadow": len(s.shadow)}
                        for s in live_series(settings)}}


def live_series(settings: LoopSettings):
    """Each version's live ROC AUC windows as the monitor logged them in MLflow ([] without MLflow)."""
    from ml.registry import Registry

    try:
        return read_series(Registry(settings), FlightDelay.live.metric)
    except Exception as e:  # noqa: BLE001 - the report still shows what the topics hold
        log.warning("no live series from MLflow: %s", e)
        return []


def _live_panel(ax, summary: dict[str, Any], series) -> None:
    """The live metric per version over time, with promotions, shadows, retirements and rollbacks marked."""
    if not series:
        ax.text(0.5, 0.5, "no monitor windows", ha="center", transform=ax.transAxes)
        return
    t0 = min(t for s in series for t, _ in s.champion + s.shadow) if any(s.champion or s.shadow for s in series) \
        else 0.0
    served = serving_order(series)
    for i, s in enumerate(series):
        color = f"C{i % 10}"
        if s.shadow:
            ax.plot([t - t0 for t, _ in s.shadow], [v for _, v in s.shadow], ".--", color=color, alpha=0.7,
                    label=f"v{s.version} (shadow)" if not s.champion else None)
        for k, part in enumerate(segments(s, served)):  # a line stops while another version serves
            ax.plot([t - t0 for t, _ in part], [v for _, v in part], "o-", ms=3, color=color,
                    label=f"v{s.version}" if k == 0 else None)
    marks = {"live": ("C2", "live"), "shadow": ("C1", "shadow"), "retired": ("0.5", "retired")}
    for r in summary["stages"]:
        if r.get("at"):
            at = pd.Timestamp(r["at"]).value / 1e9 - t0
            color, name = marks[r["status"]]
            ax.axvline(at, color=color, lw=0.7, ls=":")
            ax.text(at, 1.0, f"v{r['model_version']} {name}", color=color, fontsize=6, rotation=90, va="top",
                    transform=ax.get_xaxis_transform())
    for d in summary["monitor"]["decisions"]:
        if d["action"] == "rollback" and d.get("at"):
            at = pd.Timestamp(d["at"]).value / 1e9 - t0
            ax.axvline(at, color="C3", lw=1.5)
            ax.text(at, 0.02, f" rollback v{d['model_version']}→v{d['target_version']}", color="C3",
                    fontsize=7, transform=ax.get_xaxis_transform())
    ax.set(title="Live ROC AUC per version, one point per monitor window (dashed: as a shadow)\n"
                 "dotted: a version live, in shadow, retired; red: the monitor's automatic rollback",
           xlabel="seconds since the first window", ylabel="ROC AUC")
    ax.legend(loc="best", fontsize=7, ncol=4)
    ax.grid(alpha=0.3)


def _figure(summary: dict[str, Any], predictions: pd.DataFrame, path: Path, series=()) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, (top, live, bottom) = plt.subplots(3, 1, figsize=(10, 11), gridspec_kw={"height_ratios": [3, 3, 2]})
    _live_panel(live, summary, series)
    months = summary["months"]
    x = [m["month"] for m in months]
    top.plot(x, [m["auc_loop"] for m in months], "o-", label="continuous retraining (live predictions)")
    top.plot(x, [m["auc_frozen"] for m in months], "s--",
             label=f"frozen January model (v{summary['frozen_model_version']})")
    top.plot(x, [np.nan if m["auc_tree"] is None else m["auc_tree"] for m in months], "^:", color="0.4",
             label="gradient-boosted tree retrained monthly (offline, same rows and inputs)")
    for m in months:
        if m["in_sample"]:
            top.axvspan(m["month"] - 0.5, m["month"] + 0.5, color="0.9", zorder=0)
        share = m["share_previous_month_version"]
        label = ",".join(f"v{v}" for v in m["model_versions"])
        if share is not None:
            label += f"\n{share:.0%}"
        elif not m["in_sample"]:  # the run of the month before was not promoted: an older version served
            label += "\n(gate kept)"
        top.annotate(label, (m["month"], m["auc_loop"] or 0.5),
                     textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    top.set(title="Live ROC AUC per month (predictions joined with late labels; grey: in-sample)\n"
                  "%: share of the month scored by the version trained on every earlier month",
            xlabel="month of 2013", ylabel="ROC AUC", xticks=x)
    top.margins(y=0.15)  # room for the labels above the points
    top.legend(loc="best")
    top.grid(alpha=0.3)
    if not predictions.empty:
        t = _ms(predictions["scored_at"])
        t0 = t.min()
        per_s = np.bincount((t - t0) // 1000)
        bottom.plot(np.arange(len(per_s)), per_s, lw=0.7)
        for s in summary["swaps"]:
            at = pd.Timestamp(s["live_at"]).value // 1_000_000 if s["live_at"] else None
            if at is not None:
                bottom.axvline((at - t0) / 1000, color="C3", lw=0.8, ls=":")
                bottom.text((at - t0) / 1000, per_s.max(), f"v{s['model_version']}", color="C3", fontsize=7,
                            ha="center", va="bottom")
    # Symmetric log: January's backlog (thousands per second) and the paced months (hundreds) both show.
    bottom.set_yscale("symlog", linthresh=100)
    bottom.set_ylim(bottom=0)
    bottom.set(title="Predictions per second; dotted: model version taken live", xlabel="seconds since first "
               "prediction", ylabel="predictions/s")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _page(s: dict[str, Any]) -> str:
    beat, compared = s["loop_beat_frozen_months"], s["compared_months"]
    lines = [
        "# Continuous retraining demo: report", "",
        f"Generated {s['generated_at']}" + (f" after a {s['wall_seconds']:.0f} s run" if s["wall_seconds"] else "")
        + f". {s['prediction_records']} prediction records on `{s['topics']['predictions']}`, "
          f"{s['labelled_flights']} flights joined with their label on `{s['topics']['completed']}` "
          f"({s['duplicate_predictions']} duplicate predictions dropped).", "",
        f"**The loop beat the frozen January model (v{s['frozen_model_version']}) in {len(beat)} of "
        f"{len(compared)} compared months** ({', '.join(map(str, beat)) or 'none'}). Months scored by a model "
        "trained on them (in-sample: January's backlog waits for the January model) or only by the frozen "
        "version itself are shown, not compared.",
        "", f"![live AUC and throughput]({FIGURE})", "",
        "The tree is scikit-learn's `HistGradientBoostingClassifier` trained, offline, on the rows and inputs of the "
        "loop's run before each month (`use_cases/flight_delay/baseline.py`). \"Share\" is the part of the month "
        "scored by the version trained on every earlier month (the month before's run; the rest, the head of the "
        "month streamed while that run trained, by the version before it); \"AUC previous-month version\" is "
        "that version's AUC over the whole month.", "",
        "| month | predictions | versions (share) | share | AUC loop | AUC previous-month version | AUC tree | "
        "AUC frozen | log loss loop | log loss frozen | in-sample | loop better | scored/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in s["months"]:
        better = {True: "yes", False: "no", None: "-"}[m["loop_beats_frozen"]]
        shares = ", ".join(f"v{v} {share:.1%}" for v, share in m["share_by_version"].items())
        lines.append(f"| {m['month']} | {m['predictions']} | {shares} | "
                     f"{_fmt(m['share_previous_month_version'], '.1%')} | {_fmt(m['auc_loop'])} | "
                     f"{_fmt(m['auc_previous_month_version'])} | {_fmt(m['auc_tree'])} | "
                     f"{_fmt(m['auc_frozen'])} | {_fmt(m['log_loss_loop'])} | "
                     f"{_fmt(m['log_loss_frozen'])} | {'yes' if m['in_sample'] else 'no'} | {better} | "
                     f"{_fmt(m['per_s'], '.0f')} |")
    lines += ["", "## Gate decisions (one DAG run per month)", "",
              "| month | run | state | verdict | version | challenger AUC | champion AUC | reasons | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in s["runs"]:
        lines.append(f"| {r['month']} | {r['run_id']} | {r['state']} | {r.get('verdict') or r.get('stopped_at') or '-'}"
                     f" | {('v%d' % r['model_version']) if r.get('model_version') else '-'} | "
                     f"{_fmt(r.get('challenger_auc'))} | {_fmt(r.get('champion_auc'))} | "
                     f"{'; '.join(r.get('reasons') or []) or '-'} | {_fmt(r.get('seconds'), '.0f')} |")
    lines += ["", "## Swaps (scorer took a version live)", "",
              "The prediction gap is the time between the old version's last prediction and the new one's "
              "first; next to it the typical interval between batches before the swap. A swap while the input "
              "had run dry (between two months) shows idle time, not a pause.", "",
              "| version | previous | live at | publication to live (ms) | load (ms) | prediction gap (ms) | "
              "typical gap before (ms) | while scoring |", "|---|---|---|---|---|---|---|---|"]
    for w in s["swaps"]:
        lines.append(f"| v{w['model_version']} | {('v%s' % w['previous_version']) if w['previous_version'] else '-'} | "
                     f"{w['live_at']} | {_fmt(w['publication_to_live_ms'], '.0f')} | {_fmt(w['load_ms'], '.0f')} | "
                     f"{_fmt(w['gap_ms'], '.0f')} | {_fmt(w['typical_gap_ms'], '.0f')} | "
                     f"{'-' if w['gap_ms'] is None else 'yes' if w['while_scoring'] else 'no (idle)'} |")
    for r in s["refused_by_scorer"]:
        lines.append(f"\nRefused by scorer {r['scorer_id']}: v{r['model_version']} ({r['reason']})")
    lines += ["", "## Live monitor decisions", "",
              "The monitor (`python -m ml monitor`) joins the predictions with the labels as they arrive and judges "
              "each window of labelled events; the figure's middle panel shows the windows.", "",
              "| at | action | version | to | metric | value | compared with | events | reason | done |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for d in s["monitor"]["decisions"]:
        lines.append(f"| {d['at']} | {d['action']} | v{d['model_version']} | "
                     f"{('v%s' % d['target_version']) if d.get('target_version') else '-'} | {d['metric']} | "
                     f"{_fmt(d['value'])} | {_fmt(d['reference'])} | {d['events']} | {d['reason']} | {d['done']} |")
    if not s["monitor"]["decisions"]:
        lines.append("| - | none | | | | | | | | |")
    t = s["throughput"]
    lines += ["", "Largest prediction gap at a swap while scoring: "
                  f"{_fmt(s['max_swap_gap_ms_while_scoring'], '.0f')} ms.", "",
              f"Throughput: {t['predictions']} predictions over {t['seconds']:.0f} s of scoring "
              f"({_fmt(t['per_s'], '.0f')}/s on average, bounded by the paced replay and including the waits "
              f"between months; busiest second {t['peak_per_s']}, when January's backlog was scored). The "
              "scored/s column is each month's predictions over the time they were scored in.", ""]
    return "\n".join(lines)
