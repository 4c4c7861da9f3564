"""Training: fit the preprocessing, choose the epoch count on a time-ordered split, refit on all rows."""

from __future__ import annotations

import gc
import logging
import time
from functools import partial
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa

from ml.contracts import field_specs
from ml.row_scan import Scan, gather, selected, table_scan
from ml.settings import LoopSettings
from ml.snapshot import SnapshotRows
from ml.split import latest_cut, time_order
from ml.training import TrainResult, aligned_empty, fit, side_by_side
from use_cases.flight_delay import model as model_lib
from use_cases.flight_delay import preprocessing as prep
from use_cases.flight_delay.contracts import FlightCompleted
from use_cases.flight_delay.preprocessing import FlightPreprocessing

log = logging.getLogger(__name__)

LABEL = prep.LABEL
TIME_ORDER = ("sched_dep_utc", "flight_id")
VALIDATION_FRACTION = 0.12
# With large batches (4096) a network trained on two or three months took a dozen steps per epoch and early
# stopping settled on the first epoch, an underfitted model; 512 fits those months and a year alike.
BATCH_SIZE = 512
# A phase's model inputs (all its rows, training and validation) are transformed once and held in memory when
# they take at most this many bytes (a year of flights fits), as tensors over the arrays (``ml.training.fit``: no
# copy per fit): Keras then batches and shuffles them, the fastest way. Larger sets (years of flights) are
# streamed: transformed again each epoch, a chunk at a time (``Batches``), so the inputs held at any time are a few
# megabytes whatever the number of rows, for more CPU per epoch.
IN_MEMORY_INPUT_BYTES = 384 << 20
# Rows transformed at once, in memory or streamed (16 batches): a transform call's overhead is amortised, and a
# chunk's working arrays stay small (a large table transforms faster in chunks than in one call).
CHUNK_BATCHES = 16
CHUNK_ROWS = CHUNK_BATCHES * BATCH_SIZE
# A streamed epoch visits at most this many rows, drawn afresh each epoch: the network (about 18k weights) learns
# no more from ten years per epoch than from one and a half, and a training's time stays bounded as history grows.
EPOCH_ROWS = 500_000


class Batches(keras.utils.PyDataset):
    """The rows at positions ``rows`` of ``scan`` (a snapshot's row groups, ``ml.row_scan``) as (model inputs,
    labels) batches of ``BATCH_SIZE``, transformed ``CHUNK_BATCHES`` batches at a time: only one chunk of model
    inputs exists at once, and of the rows only those an epoch visits.

    With ``seed``, every epoch visits the rows in a new permutation drawn from ``(seed, epoch)``, as
    ``model.fit(shuffle=True)`` does with arrays, up to ``EPOCH_ROWS`` of them, gathered in one pass over ``scan``
    as the epoch begins; without, all of them in the order given, gathered once (validation).
    """

    def __init__(self, fitted: FlightPreprocessing, scan: Scan, labels: np.ndarray, rows: np.ndarray,
                 seed: int | None = None):
        super().__init__()
        self.fitted, self.scan, self.labels, self.rows, self.seed = fitted, scan, labels, rows, seed
        self._epoch, self._order, self._chunk = 0, rows, (-1, None)
        # A shuffled epoch is the first EPOCH_ROWS of its permutation: a new sample of the rows each epoch.
        self._epoch_rows = len(rows) if seed is None else min(len(rows), EPOCH_ROWS)
        # The rows at ``_order``, in its order; a shuffled dataset's are gathered as each epoch begins.
        self._held = gather(scan, rows) if seed is None else None

    def __len__(self) -> int:
        return -(-self._epoch_rows // BATCH_SIZE)

    def on_epoch_begin(self) -> None:
        if self.seed is not None:
            self._epoch += 1
            order = np.random.default_rng([self.seed, self._epoch]).permutation(len(self.rows))
            self._order = self.rows[order[:self._epoch_rows]]  # only the epoch's rows: members train side by side
            self._chunk, self._held = (-1, None), None  # the last epoch's rows go before this one's are read
            self._held = gather(self.scan, self._order)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        chunk, batch = divmod(index, CHUNK_BATCHES)
        cached, data = self._chunk  # read once: members training side by side share the validation batches
        if cached != chunk:
            at = slice(chunk * CHUNK_ROWS, (chunk + 1) * CHUNK_ROWS)
            # Keras reads a batch or two before the first epoch begins, to learn their shapes.
            rows = gather(self.scan, self._order[at]) if self._held is None else \
                self._held.slice(at.start, CHUNK_ROWS)
            data = (prep.transform(self.fitted, rows), self.labels[self._order[at]])
            self._chunk = (chunk, data)
        x, y = data
        at = slice(batch * BATCH_SIZE, (batch + 1) * BATCH_SIZE)
        return {name: values[at] for name, values in x.items()}, y[at]


def _row_bytes(fitted: FlightPreprocessing) -> int:
    """Bytes of one row's model inputs: the float32 numeric block and an int32 per categorical."""
    return 4 * (fitted.numeric_width + len(fitted.vocabularies))


def _transform(fitted: FlightPreprocessing, scan: Scan, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The model inputs of the rows of ``scan`` at ``rows``, in that order, transformed a chunk at a time."""
    table = gather(scan, rows)
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(rows), CHUNK_ROWS):
        for name, values in prep.transform(fitted, table.slice(start, CHUNK_ROWS)).items():
            held = out.setdefault(name, aligned_empty((len(rows), *values.shape[1:]), values.dtype))
            held[start:start + len(values)] = values
    return out


def _data(fitted: FlightPreprocessing, scan: Scan, y: np.ndarray, rows: np.ndarray, streamed: bool,
          seed: int | None = None) -> tuple[Any, np.ndarray | None]:
    """The ``x, y`` of ``ml.training.fit`` for ``rows``: their model inputs (in ``aligned_empty`` arrays, which
    ``fit`` shares with TensorFlow) and labels, or a ``Batches`` dataset (shuffled each epoch from ``seed`` if
    given) and None."""
    if streamed:
        return Batches(fitted, scan, y, rows, seed), None
    return _transform(fitted, scan, rows), y[rows]


def _fit(scan: Scan, y: np.ndarray, rows: np.ndarray) -> FlightPreprocessing:
    """The preprocessing fitted on the rows of ``scan`` at ``rows`` (labels ``y``, one per row of the scan), read
    in one pass per phase of the fit: the same fit as ``prep.fit`` on a table of them in that order."""
    where = np.full(len(y), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return prep.fit_parts(lambda: selected(scan, where), y[rows])


def _read_types() -> dict[str, pa.DataType]:
    """How training reads each field it can hold in less than the contract's type: the string fields as
    dictionaries, and the integer fields as int16 where the contract bounds them within it (the snapshot refuses
    a record out of bounds)."""
    int16 = np.iinfo(np.int16)
    types: dict[str, pa.DataType] = {name: pa.dictionary(pa.int32(), pa.string()) for name in prep.STRING_FIELDS}
    for spec in field_specs(FlightCompleted):
        low, high = spec.ge if spec.ge is not None else spec.gt, spec.le if spec.le is not None else spec.lt
        if spec.name in prep.INPUT_FIELDS and spec.base is int and low is not None and high is not None \
                and int16.min <= low and high <= int16.max:
            types[spec.name] = pa.int16()
    return types


def _source(rows: pd.DataFrame | pa.Table | SnapshotRows) -> tuple[np.ndarray, np.ndarray, Scan]:
    """The rows' positions in time order (``TIME_ORDER``) and every row's label, read from those columns alone,
    and a scan of the fields the model reads: a snapshot's read from its Parquet row groups in each pass (each
    field in its narrowest type, ``_read_types``), nothing held or written; a frame's or table's sliced from it."""
    if isinstance(rows, SnapshotRows):
        keys = rows.table([*TIME_ORDER, LABEL], mapped=False)
        return time_order(keys, TIME_ORDER), prep.labels(keys), \
            partial(rows.scan, list(prep.INPUT_FIELDS), types=_read_types())
    table = prep.input_table(rows, carry=(LABEL,))
    return time_order(rows, TIME_ORDER), prep.labels(table), table_scan(prep.input_table(table))


def train(rows: pd.DataFrame | pa.Table | SnapshotRows, settings: LoopSettings) -> TrainResult:
    """Train a delay model on ``flights.completed`` rows (a frame, a table, or a snapshot's ``SnapshotRows``);
    deterministic for a given ``settings.seed`` whatever the rows' order.

    For each of ``model.MEMBERS`` members, from seeds ``settings.seed``, ``settings.seed + 1``, ...:

    1. Early stopping (best weights restored) on the validation loss of the most recent
       ``VALIDATION_FRACTION`` of rows by ``TIME_ORDER`` picks the epoch count (at most ``settings.epochs``),
       with a preprocessing fitted on the other rows only: its delay rates must not know the validation labels.
    2. The member is refitted from the same seed on all rows for that many epochs, with a preprocessing fitted
       on all rows: the most recent weeks carry the most signal about the weeks to come, so the final model
       must not leave them out.

    The members train side by side, each on a thread of its own (``ml.training.side_by_side``; each trains the
    model it would train alone), and the served model is their average (``model.assemble``). Only the time order
    and the labels are read whole (a few bytes a row). The fields the model reads are read by position from a
    scan (``_source``): a snapshot's Parquet row groups are read again in each pass (each preprocessing fit, and
    each streamed epoch), and only the rows a pass picks are held, so the history is never held or copied whole.
    Model inputs are held in memory up to ``IN_MEMORY_INPUT_BYTES`` and streamed beyond (``Batches``), and every
    member's early stopping runs before the refit's inputs are made.

    No class weights: the gate and the scorer need calibrated probabilities (log loss), and reweighting does
    not improve ranking (AUC). Raises ValueError on fewer than ``settings.min_training_rows`` rows or a
    single-class set.
    """
    started = time.perf_counter()
    count = rows.count if isinstance(rows, SnapshotRows) else len(rows)
    if count < settings.min_training_rows:
        raise ValueError(f"{count} rows is fewer than min_training_rows={settings.min_training_rows}")
    # A canonical row order: the same rows give the same model whichever partitions they were read from. Only
    # the order keys are sorted; the rows are then read by position. The label is read once: both fits take it.
    order, label, scan = _source(rows)
    del rows
    cut = latest_cut(len(order), VALIDATION_FRACTION)
    train_rows, val_rows, all_rows = order[:cut], order[cut:], order
    if np.isnan(label).any():
        raise ValueError(f"training needs the label {LABEL!r} on every row")
    if label.min() == label.max():
        raise ValueError("training rows hold a single class")
    y = label.astype("float32")
    early = _fit(scan, label, train_rows)
    # Every member's early stopping runs before the refit's preprocessing and inputs exist: the inputs of one
    # phase are held at a time. Arrays held in memory serve every member (Keras shuffles them from the member's
    # seed); a streamed dataset is made per member, shuffled from its seed.
    streamed = len(all_rows) * _row_bytes(early) > IN_MEMORY_INPUT_BYTES
    held, val = None if streamed else _data(early, scan, y, train_rows, streamed), \
        _data(early, scan, y, val_rows, streamed)

    def early_stopping(i: int) -> tuple[dict[str, list[float]], int]:
        seed = settings.seed + i
        x, labels = held or _data(early, scan, y, train_rows, streamed, seed)
        _, history, best_epoch = fit(lambda: model_lib.build(early), x, labels, seed=seed, epochs=settings.epochs,
                                     batch_size=BATCH_SIZE, validation=val)
        log.info("member %d: early stopping on %d train / %d validation rows (preprocessing %s, inputs %s): best "
                 "epoch %d of %d, val_loss %.4f val_auc %.4f", i, len(train_rows), len(val_rows), early.fingerprint,
                 "streamed" if streamed else "in memory", best_epoch, len(history["loss"]),
                 history["val_loss"][best_epoch - 1], history["val_auc"][best_epoch - 1])
        return history, best_epoch

    # Each member from its own seed, with its own epoch count; the members train side by side.
    histories, best_epochs = map(list, zip(*side_by_side(
        [partial(early_stopping, i) for i in range(model_lib.MEMBERS)]), strict=True))
    held = val = None  # the early stopping's inputs go before the refit's are made
    # and so do its models and datasets, which reference each other (TensorFlow's traced functions): collected now,
    # not whenever the collector next runs, their memory serves the refit (docs/performance.md).
    gc.collect()
    fitted = _fit(scan, label, all_rows)
    del label
    streamed = len(all_rows) * _row_bytes(fitted) > IN_MEMORY_INPUT_BYTES
    held = None if streamed else _data(fitted, scan, y, all_rows, streamed)

    def refit(i: int) -> keras.Model:  # the same seed refits on all rows for the chosen epochs
        seed = settings.seed + i
        x, labels = held or _data(fitted, scan, y, all_rows, streamed, seed)
        return fit(lambda: model_lib.build(fitted), x, labels, seed=seed, epochs=best_epochs[i],
                   batch_size=BATCH_SIZE)[0]

    members = side_by_side([partial(refit, i) for i in range(len(best_epochs))])
    held = None
    model = model_lib.assemble(fitted, members)
    seconds = time.perf_counter() - started
    log.info("trained %d members on %d rows for %s epochs (preprocessing v%d %s) in %.1f s", len(members),
             len(all_rows), best_epochs, fitted.version, fitted.fingerprint, seconds)
    # The first member's early-stopping history stands for the run (MLflow plots it; each member's best epoch is
    # logged above).
    return TrainResult(model=model, preprocessing=fitted, history=histories[0], rows_train=len(train_rows),
                       rows_val=len(val_rows), epochs_run=len(histories[0]["loss"]), best_epoch=best_epochs[0],
                       seconds=seconds)
