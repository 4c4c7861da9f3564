"""A reproducible stream of machine sensor readings with labelled, injected anomalies, and its replay to Kafka.

Each machine reports every channel at a fixed cadence in event time. Normal behaviour follows one hidden
load signal (a daily cycle, a two-hour production cycle and slow noise): rpm, current and pressure follow the
load, temperature follows it with a lag, vibration grows with the square of the speed. Every channel has its
own measurement noise and each machine its own baseline, so the channels are correlated the way a real
machine's are, and an anomaly is a reading that leaves that relationship.

Anomaly episodes (labelled ``is_anomaly=True`` with their ``anomaly_kind`` on every reading they cover):

- ``spike``: one reading of one channel jumps by 3-6 channel scales (a glitch or an impact);
- ``drift``: one of temperature, vibration or pressure moves steadily away from normal over 40-80 readings
  (a fouled sensor, a clogging filter), starting at 0.5 scales and ending at 3-6;
- ``stuck``: one of pressure, current or rpm repeats its value at the episode start for 30-60 readings while
  the machine's load keeps moving (a frozen sensor);
- ``correlated``: a bearing failure over 20-40 readings: vibration, temperature and current rise together
  while rpm drops, from 20% to full severity.

Episodes are spaced so that about ``anomaly_rate`` of the readings are anomalous, and the kinds rotate
(starting at a different kind per machine), so every kind is present once there are at least four episodes.
The same arguments give the same readings, byte for byte (``numpy.random.default_rng`` seeded per machine):
``seed`` draws noise and anomalies, ``fleet_seed`` the machines' baselines, so a stream generated for the next
period with another seed continues the same fleet.
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from ml.contracts import field_specs
from ml.json_columns import encode_records, json_column
from ml.replay import EventStream, ReplaySummary, replay
from ml.settings import LoopSettings
from ml.topics import ensure_topics
from use_cases.sensor_anomaly.contracts import ANOMALY_KINDS, CHANNELS, SensorReading
from use_cases.sensor_anomaly.use_case import SensorAnomaly

log = logging.getLogger(__name__)

START = datetime(2026, 1, 1, tzinfo=UTC)
# Typical spread of each channel under normal load: anomaly magnitudes are multiples of these.
SCALE = {"temperature": 5.0, "vibration": 0.8, "pressure": 0.5, "current": 10.0, "rpm": 80.0}
NOISE = {"temperature": 0.3, "vibration": 0.08, "pressure": 0.05, "current": 1.0, "rpm": 5.0}
LENGTHS = {"spike": (1, 1), "drift": (40, 80), "stuck": (30, 60), "correlated": (20, 40)}
WARM_UP = 30  # readings before the first episode: a stuck value needs a value to stick to


def _load(rng: np.random.Generator, machine: np.random.Generator, n: int, cadence_s: float,
          start: datetime) -> np.ndarray:
    """The hidden load in [0.1, 1]: daily cycle + two-hour production cycle (phases: the machine's) + AR(1)
    noise (the stream's). The cycles run on absolute time, so a later stream continues an earlier one."""
    hours = (start.timestamp() + np.arange(n) * cadence_s) / 3600
    phase = machine.uniform(0, 2 * np.pi, size=2)
    ar = np.empty(n)
    ar[0] = 0.0
    shocks = rng.normal(0, 0.02, size=n)
    for i in range(1, n):
        ar[i] = 0.95 * ar[i - 1] + shocks[i]
    load = 0.55 + 0.2 * np.sin(2 * np.pi * hours / 24 + phase[0]) + 0.15 * np.sin(2 * np.pi * hours / 2 + phase[1])
    return np.clip(load + ar, 0.1, 1.0)


def _normal(rng: np.random.Generator, machine: np.random.Generator, load: np.ndarray) -> dict[str, np.ndarray]:
    """The channels of one healthy machine (baselines from ``machine``) for a load series."""
    base_rpm, ambient, p0 = machine.uniform(1400, 1800), machine.uniform(18, 26), machine.uniform(4, 6)
    lagged = pd.Series(load).ewm(alpha=0.1).mean().to_numpy()  # temperature follows the load slowly
    rpm = base_rpm * (0.7 + 0.3 * load)
    n = len(load)
    return {
        "temperature": ambient + 35 * lagged + rng.normal(0, NOISE["temperature"], n),
        "vibration": 1.5 + 2.5 * (rpm / base_rpm) ** 2 + rng.normal(0, NOISE["vibration"], n),
        "pressure": p0 + 3 * load + rng.normal(0, NOISE["pressure"], n),
        "current": 20 + 60 * load + rng.normal(0, NOISE["current"], n),
        "rpm": rpm + rng.normal(0, NOISE["rpm"], n),
    }


def _inject(rng: np.random.Generator, values: dict[str, np.ndarray], kind: str, a: int, b: int) -> None:
    """Apply one anomaly episode of ``kind`` to readings ``[a, b)`` in place."""
    n = b - a
    if kind == "spike":
        channel = CHANNELS[rng.integers(len(CHANNELS))]
        values[channel][a:b] += rng.choice([-1, 1]) * rng.uniform(3, 6) * SCALE[channel]
    elif kind == "drift":
        channel = ("temperature", "vibration", "pressure")[rng.integers(3)]
        values[channel][a:b] += np.linspace(0.5, rng.uniform(3, 6), n) * SCALE[channel]
    elif kind == "stuck":
        channel = ("pressure", "current", "rpm")[rng.integers(3)]
        values[channel][a:b] = values[channel][a - 1]
    else:  # correlated: a bearing failure, severity from 20% to 100%
        severity = np.linspace(0.2, 1.0, n)
        values["vibration"][a:b] += 3 * SCALE["vibration"] * severity
        values["temperature"][a:b] += 1.5 * SCALE["temperature"] * severity
        values["current"][a:b] += 1.5 * SCALE["current"] * severity
        values["rpm"][a:b] -= 1.5 * SCALE["rpm"] * severity


def _episodes(rng: np.random.Generator, n: int, anomaly_rate: float, first_kind: int
              ) -> list[tuple[str, int, int]]:
    """(kind, start, end) of non-overlapping episodes, kinds in rotation, about ``anomaly_rate`` of ``n``."""
    mean_len = np.mean([(lo + hi) / 2 for lo, hi in LENGTHS.values()])
    mean_gap = mean_len * (1 - anomaly_rate) / anomaly_rate
    out, pos, k = [], WARM_UP, first_kind
    while True:
        pos += int(rng.uniform(0.5, 1.5) * mean_gap)
        kind = ANOMALY_KINDS[k % len(ANOMALY_KINDS)]
        lo, hi = LENGTHS[kind]
        length = int(rng.integers(lo, hi + 1))
        if pos + length > n:
            return out
        out.append((kind, pos, pos + length))
        pos, k = pos + length, k + 1


def generate(machines: int = 4, readings: int = 2000, *, seed: int = 7, anomaly_rate: float = 0.03,
             cadence_s: float = 60.0, start: datetime = START, fleet_seed: int = 0) -> pd.DataFrame:
    """``readings`` readings of each of ``machines`` machines from ``start``, in event-time order (ties:
    machine id).

    ``seed`` draws the noise and the anomalies; ``fleet_seed`` the machines themselves (baselines, cycle
    phases), so streams of different seeds, e.g. consecutive periods, come from the same machines.
    Columns are the fields of ``SensorReading``. Raises ValueError on non-positive sizes or a rate outside
    (0, 0.5).
    """
    if machines < 1 or readings < 1 or cadence_s <= 0:
        raise ValueError("machines, readings and cadence_s must be positive")
    if not 0 < anomaly_rate < 0.5:
        raise ValueError(f"anomaly_rate must be in (0, 0.5), got {anomaly_rate}")
    frames = []
    for m in range(machines):
        rng, machine = np.random.default_rng([seed, m]), np.random.default_rng([fleet_seed, m])
        machine_id = f"m{m:03d}"
        values = _normal(rng, machine, _load(rng, machine, readings, cadence_s, start))
        kinds = np.full(readings, "none", dtype=object)
        for kind, a, b in _episodes(rng, readings, anomaly_rate, first_kind=m):
            _inject(rng, values, kind, a, b)
            kinds[a:b] = kind
        for name, spec in zip(CHANNELS, _ranges(), strict=True):
            # Stay inside the measuring range: a saturated sensor reads its limit, it does not break the record.
            values[name] = np.round(np.clip(values[name], *spec), 3)
        frames.append(pd.DataFrame({
            "schema_version": 1,
            "reading_id": [f"{machine_id}-{i:07d}" for i in range(readings)],
            "machine_id": machine_id,
            "ts": pd.date_range(start, periods=readings, freq=timedelta(seconds=cadence_s), unit="ms"),
            **values,
            "is_anomaly": kinds != "none",
            "anomaly_kind": kinds.astype(str),
        }))
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["ts", "machine_id"], kind="stable", ignore_index=True)


def _ranges() -> list[tuple[float, float]]:
    """(low, high) of each channel's contract range."""
    specs = {f.name: f for f in field_specs(SensorReading)}
    return [(specs[c].ge, specs[c].le) for c in CHANNELS]


def stream(settings: LoopSettings, readings: pd.DataFrame) -> EventStream:
    """The readings as one run of `sensors.readings` events: key = machine id, timestamp = ``ts``."""
    fields = list(SensorReading.model_fields)
    with warnings.catch_warnings():
        # pyarrow 25 reads tz-aware columns through Series.values, deprecated in pandas 3.1 (values unchanged).
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        table = pa.Table.from_pandas(readings[fields], preserve_index=False)
    values = encode_records({name: json_column(table.column(name).combine_chunks()) for name in fields}, fields)
    stamps = readings["ts"].dt.tz_convert(None).to_numpy(dtype="datetime64[ms]").astype(np.int64)
    return EventStream(topics=[settings.topic(SensorAnomaly.topics.input)] * len(readings),
                       keys=readings["machine_id"].tolist(), values=values.to_pylist(), timestamps=stamps,
                       origin_ms=int(stamps[0]) if len(stamps) else 0)


def replay_readings(settings: LoopSettings, readings: pd.DataFrame, *, speed: float | None = None,
                    rate: float | None = None, progress: bool = False, timeout: float = 10.0) -> ReplaySummary:
    """Produce ``readings`` to `sensors.readings` in order (creating missing topics first); the summary.

    Pacing as in ``ml.replay.replay``. Raises BrokerUnavailable or DeliveryFailed.
    """
    ensure_topics(settings, [SensorAnomaly()], timeout=timeout)
    topic = settings.topic(SensorAnomaly.topics.input)
    summary = replay(settings, [stream(settings, readings)], topics=[topic], total=len(readings), speed=speed,
                     rate=rate, progress=progress)
    log.info("sensor replay: %d readings of %d machines (%d anomalous) to %s", summary.events,
             readings["machine_id"].nunique(), int(readings["is_anomaly"].sum()), topic)
    return summary
