"""Training: fit the preprocessing, choose the epoch count on a time-ordered split, refit on all rows."""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa

from ml.settings import LoopSettings
from ml.split import time_split
from ml.training import TrainResult, fit
from use_cases.flight_delay import model as model_lib
from use_cases.flight_delay import preprocessing as prep
from use_cases.flight_delay.preprocessing import FlightPreprocessing

log = logging.getLogger(__name__)

LABEL = prep.LABEL
TIME_ORDER = ("sched_dep_utc", "flight_id")
VALIDATION_FRACTION = 0.12
# With large batches (4096) a network trained on two or three months took a dozen steps per epoch and early
# stopping settled on the first epoch, an underfitted model; 512 fits those months and a year alike.
BATCH_SIZE = 512
# A phase's model inputs (all its rows, training and validation) are transformed once and held as arrays when
# they take at most this many bytes (a year of flights fits): Keras then batches and shuffles them, the fastest
# way, though its own copies of them come on top. Larger sets (years of flights) are streamed: transformed again
# each epoch, a chunk at a time (``Batches``), so the inputs held at any time are a few megabytes whatever the
# number of rows, for more CPU per epoch.
IN_MEMORY_INPUT_BYTES = 384 << 20
# Rows transformed at once, in memory or streamed (16 batches): a transform call's overhead is amortised, and a
# chunk's working arrays stay small (a large table transforms faster in chunks than in one call).
CHUNK_BATCHES = 16
CHUNK_ROWS = CHUNK_BATCHES * BATCH_SIZE
# A streamed epoch visits at most this many rows, drawn afresh each epoch: the network (about 18k weights) learns
# no more from ten years per epoch than from one and a half, and a training's time stays bounded as history grows.
EPOCH_ROWS = 500_000


class Batches(keras.utils.PyDataset):
    """The rows of ``table`` at positions ``rows`` as (model inputs, labels) batches of ``BATCH_SIZE``,
    transformed ``CHUNK_BATCHES`` batches at a time: only one chunk of model inputs exists at once.

    With ``seed``, every epoch visits the rows in a new permutation drawn from ``(seed, epoch)``, as
    ``model.fit(shuffle=True)`` does with arrays, up to ``EPOCH_ROWS`` of them; without, all of them in the order
    given (validation).
    """

    def __init__(self, fitted: FlightPreprocessing, table: pa.Table, labels: np.ndarray, rows: np.ndarray,
                 seed: int | None = None):
        super().__init__()
        self.fitted, self.table, self.labels, self.rows, self.seed = fitted, table, labels, rows, seed
        self._epoch, self._order, self._chunk = 0, rows, (-1, None)
        # A shuffled epoch is the first EPOCH_ROWS of its permutation: a new sample of the rows each epoch.
        self._epoch_rows = len(rows) if seed is None else min(len(rows), EPOCH_ROWS)

    def __len__(self) -> int:
        return -(-self._epoch_rows // BATCH_SIZE)

    def on_epoch_begin(self) -> None:
        if self.seed is not None:
            self._epoch += 1
            self._order = self.rows[np.random.default_rng([self.seed, self._epoch]).permutation(len(self.rows))]
            self._chunk = (-1, None)

    def __getitem__(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        chunk, batch = divmod(index, CHUNK_BATCHES)
        if self._chunk[0] != chunk:
            rows = self._order[chunk * CHUNK_ROWS:(chunk + 1) * CHUNK_ROWS]
            self._chunk = (chunk, (prep.transform(self.fitted, self.table.take(rows)), self.labels[rows]))
        x, y = self._chunk[1]
        at = slice(batch * BATCH_SIZE, (batch + 1) * BATCH_SIZE)
        return {name: values[at] for name, values in x.items()}, y[at]


def _row_bytes(fitted: FlightPreprocessing) -> int:
    """Bytes of one row's model inputs: the float32 numeric block and an int32 per categorical."""
    return 4 * (fitted.numeric_width + len(fitted.vocabularies))


def _transform(fitted: FlightPreprocessing, table: pa.Table, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The model inputs of the rows of ``table`` at ``rows``, in that order, transformed a chunk at a time."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(rows), CHUNK_ROWS):
        for name, values in prep.transform(fitted, table.take(rows[start:start + CHUNK_ROWS])).items():
            held = out.setdefault(name, np.empty((len(rows), *values.shape[1:]), values.dtype))
            held[start:start + len(values)] = values
    return out


def _data(fitted: FlightPreprocessing, table: pa.Table, y: np.ndarray, rows: np.ndarray, streamed: bool,
          seed: int | None = None) -> tuple[Any, np.ndarray | None]:
    """The ``x, y`` of ``ml.training.fit`` for ``rows``: their model inputs and labels as arrays, or a ``Batches``
    dataset (shuffled each epoch from ``seed`` if given) and None."""
    if streamed:
        return Batches(fitted, table, y, rows, seed), None
    return _transform(fitted, table, rows), y[rows]


def train(df: pd.DataFrame, settings: LoopSettings) -> TrainResult:
    """Train a delay model on ``flights.completed`` rows; deterministic for a given ``settings.seed``.

    For each of ``model.MEMBERS`` members, from seeds ``settings.seed``, ``settings.seed + 1``, ...:

    1. Early stopping (best weights restored) on the validation loss of the most recent
       ``VALIDATION_FRACTION`` of rows by ``sched_dep_utc`` picks the epoch count (at most ``settings.epochs``),
       with a preprocessing fitted on the other rows only: its delay rates must not know the validation labels.
    2. The member is refitted from the same seed on all rows for that many epochs, with a preprocessing fitted
       on all rows: the most recent weeks carry the most signal about the weeks to come, so the final model
       must not leave them out.

    The served model is the members' average (``model.assemble``). Rows are read in place from ``df`` by
    position; their model inputs are held as arrays up to ``IN_MEMORY_INPUT_BYTES`` and streamed beyond
    (``Batches``), and every member's early stopping runs before the refit's inputs are made, so training on
    years of flights holds a few bytes per row besides ``df``.

    No class weights: the gate and the scorer need calibrated probabilities (log loss), and reweighting does
    not improve ranking (AUC). Raises ValueError on fewer than ``settings.min_training_rows`` rows or a
    single-class set.
    """
    started = time.perf_counter()
    if len(df) < settings.min_training_rows:
        raise ValueError(f"{len(df)} rows is fewer than min_training_rows={settings.min_training_rows}")
    # A canonical row order: the same rows give the same model whichever partitions they were read from. Only
    # the order keys are sorted; the rows are then read by position.
    earlier, latest = time_split(df[list(TIME_ORDER)].assign(_row=np.arange(len(df))), TIME_ORDER,
                                 fraction=VALIDATION_FRACTION)
    train_rows, val_rows = earlier["_row"].to_numpy(), latest["_row"].to_numpy()
    all_rows = np.concatenate([train_rows, val_rows])
    del earlier, latest
    y = df[LABEL].to_numpy(dtype="float32")
    if y.min() == y.max():
        raise ValueError("training rows hold a single class")
    table = prep.input_table(df)
    early = prep.fit(df, train_rows)
    # Every member's early stopping runs before the refit's preprocessing and inputs exist: the inputs of one
    # phase are held at a time. Arrays held in memory serve every member (Keras shuffles them from the member's
    # seed); a streamed dataset is made per member, shuffled from its seed.
    streamed = len(all_rows) * _row_bytes(early) > IN_MEMORY_INPUT_BYTES
    held, val = None if streamed else _data(early, table, y, train_rows, streamed), \
        _data(early, table, y, val_rows, streamed)
    histories, best_epochs = [], []
    for i in range(model_lib.MEMBERS):  # each member from its own seed, with its own epoch count
        seed = settings.seed + i
        x, labels = held or _data(early, table, y, train_rows, streamed, seed)
        _, history, best_epoch = fit(lambda: model_lib.build(early), x, labels, seed=seed, epochs=settings.epochs,
                                     batch_size=BATCH_SIZE, validation=val)
        log.info("member %d: early stopping on %d train / %d validation rows (preprocessing %s, inputs %s): best "
                 "epoch %d of %d, val_loss %.4f val_auc %.4f", i, len(train_rows), len(val_rows), early.fingerprint,
                 "streamed" if streamed else "in memory", best_epoch, len(history["loss"]),
                 history["val_loss"][best_epoch - 1], history["val_auc"][best_epoch - 1])
        histories.append(history)
        best_epochs.append(best_epoch)
    del held, val, x, labels
    fitted = prep.fit(df, all_rows)
    streamed = len(all_rows) * _row_bytes(fitted) > IN_MEMORY_INPUT_BYTES
    held, members = None if streamed else _data(fitted, table, y, all_rows, streamed), []
    for i, best_epoch in enumerate(best_epochs):  # the same seed refits on all rows for the chosen epochs
        seed = settings.seed + i
        x, labels = held or _data(fitted, table, y, all_rows, streamed, seed)
        member, _, _ = fit(lambda: model_lib.build(fitted), x, labels, seed=seed, epochs=best_epoch,
                           batch_size=BATCH_SIZE)
        members.append(member)
    del held, x, labels
    model = model_lib.assemble(fitted, members)
    seconds = time.perf_counter() - started
    log.info("trained %d members on %d rows for %s epochs (preprocessing v%d %s) in %.1f s", len(members),
             len(all_rows), best_epochs, fitted.version, fitted.fingerprint, seconds)
    # The first member's early-stopping history stands for the run (MLflow plots it; each member's best epoch is
    # logged above).
    return TrainResult(model=model, preprocessing=fitted, history=histories[0], rows_train=len(train_rows),
                       rows_val=len(val_rows), epochs_run=len(histories[0]["loss"]), best_epoch=best_epochs[0],
                       seconds=seconds)
