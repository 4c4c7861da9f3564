"""The live metric per version over time, as the plugin page and the demo report show it: read back from MLflow
(the monitor logs each window on the version's run; its decisions are tags of the registered version) and drawn
as an inline SVG, one line per version (dashed while it was a shadow), the monitor's decisions marked."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ml.monitoring.actions import DECIDED_TAG
from ml.registry import Registry

log = logging.getLogger(__name__)

ACTIONS = ("rollback", "retrain", "promote_shadow", "retire_shadow")
MARK = {"rollback": ("#c0392b", "rolled back"), "retrain": ("#8e44ad", "retraining asked"),
        "promote_shadow": ("#27ae60", "shadow promoted"), "retire_shadow": ("#7f8c8d", "shadow retired")}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class VersionSeries:
    """One version's live metric: (epoch s, value) per window as champion and as shadow, and its decisions."""

    version: int
    champion: list[tuple[float, float]] = field(default_factory=list)
    shadow: list[tuple[float, float]] = field(default_factory=list)
    decisions: list[tuple[float, str, str]] = field(default_factory=list)  # (epoch s, action, text)


def read_series(registry: Registry, metric: str) -> list[VersionSeries]:
    """Every registered version's live ``metric`` history and monitor decisions, oldest version first."""
    client = registry.client()
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{registry.name}'"), key=lambda m: int(m.version)):
        s = VersionSeries(int(mv.version))
        for key, target in ((f"live_{metric}", s.champion), (f"shadow_live_{metric}", s.shadow)):
            target += [(h.timestamp / 1000, h.value) for h in sorted(client.get_metric_history(mv.run_id, key),
                                                                     key=lambda h: h.step)]
        for action in ACTIONS:
            text = (mv.tags or {}).get(DECIDED_TAG.format(action=action))
            if text:
                at, _, why = text.partition(" ")
                try:
                    s.decisions.append((datetime.fromisoformat(at).timestamp(), action, why))
                except ValueError:
                    log.warning("v%s: unreadable %s tag %r", mv.version, action, text[:80])
        if s.champion or s.shadow or s.decisions:
            out.append(s)
    return out


def svg(series: list[VersionSeries], metric: str, width: int = 760, height: int = 240) -> str:
    """An inline SVG of the series ("" when there is nothing to draw)."""
    points = [p for s in series for p in s.champion + s.shadow]
    if not points:
        return ""
    left, right, top, bottom = 56, 120, 12, 28
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    marks = [d for s in series for d in s.decisions]
    t0, t1 = min([t0] + [t for t, *_ in marks]), max([t1] + [t for t, *_ in marks])
    values = [v for _, v in points]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 0.01
    lo, hi = lo - pad, hi + pad

    def x(t: float) -> float:
        return left + (t - t0) / ((t1 - t0) or 1) * (width - left - right)

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='live {html.escape(metric)} per model version'>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
             "fill='none' stroke='#ccc'/>"]
    for v in (lo + pad, (lo + hi) / 2, hi - pad):
        parts.append(f"<text x='{left - 4}' y='{y(v) + 4:.1f}' font-size='11' text-anchor='end'>{v:.3f}</text>")
    parts.append(f"<text x='{left}' y='{height - 8}' font-size='11'>{_clock(t0)}</text>"
                 f"<text x='{width - right}' y='{height - 8}' font-size='11' text-anchor='end'>{_clock(t1)} UTC</text>")
    legend_y = top + 10
    served = serving_order(series)
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        for segment, dash in [(s.shadow, " stroke-dasharray='4 3'")] + [(seg, "") for seg in segments(s, served)]:
            if segment:
                path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in segment)
                parts.append(f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='2'{dash}/>")
                parts += [f"<circle cx='{x(t):.1f}' cy='{y(v):.1f}' r='2.5' fill='{color}'/>" for t, v in segment]
        label = f"v{s.version}" + (" (shadow)" if s.shadow and not s.champion else "")
        parts.append(f"<text x='{width - right + 8}' y='{legend_y}' font-size='12' fill='{color}'>{label}</text>")
        legend_y += 15
        for t, action, why in s.decisions:
            mark, name = MARK[action]
            parts.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{top}' y2='{height - bottom}' stroke='{mark}' "
                         f"stroke-dasharray='2 2'><title>v{s.version} {name}: {html.escape(why)}</title></line>"
                         f"<text x='{x(t) + 3:.1f}' y='{top + 12}' font-size='10' fill='{mark}'>v{s.version} "
                         f"{name}</text>")
    parts.append("</svg>")
    return "".join(parts)


def serving_order(series: list[VersionSeries]) -> list[tuple[float, int]]:
    """(time, version) of every champion window, in time order: who served when."""
    return sorted((t, s.version) for s in series for t, _ in s.champion)


def segments(s: VersionSeries, served: list[tuple[float, int]]) -> list[list[tuple[float, float]]]:
    """The version's champion points split where another version's windows came between: a line does not
    cross the time another version served."""
    order = {t: i for i, (t, v) in enumerate(served) if v == s.version}
    runs: list[list[tuple[float, float]]] = []
    last = None
    for t, v in s.champion:
        i = order.get(t)
        if not runs or i is None or last is None or i != last + 1:
            runs.append([])
        runs[-1].append((t, v))
        last = i
    return runs


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
