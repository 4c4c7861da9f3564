"""Training: fit the preprocessing, choose the epoch count on a time-ordered split, refit on all rows."""

from __future__ import annotations

import logging
import time

import pandas as pd

from ml.settings import LoopSettings
from ml.split import time_split
from ml.training import TrainResult, fit
from use_cases.flight_delay import model as model_lib, preprocessing as prep

log = logging.getLogger(__name__)

LABEL = prep.LABEL
TIME_ORDER = ("sched_dep_utc", "flight_id")
VALIDATION_FRACTION = 0.12
# With large batches (4096) a network trained on two or three months took a dozen steps per epoch and early
# stopping settled on the first epoch, an underfitted model; 512 fits those months and a year alike.
BATCH_SIZE = 512


def train(df: pd.DataFrame, settings: LoopSettings) -> TrainResult:
    """Train a delay model on ``flights.completed`` rows; deterministic for a given ``settings.seed``.

    For each of ``model.MEMBERS`` members, from seeds ``settings.seed``, ``settings.seed + 1``, ...:

    1. Early stopping (best weights restored) on the validation loss of the most recent
       ``VALIDATION_FRACTION`` of rows by ``sched_dep_utc`` picks the epoch count (at most ``settings.epochs``),
       with a preprocessing fitted on the other rows only: its delay rates must not know the validation labels.
    2. The member is refitted from the same seed on all rows for that many epochs, with a preprocessing fitted
       on all rows: the most recent weeks carry the most signal about the weeks to come, so the final model
       must not leave them out.

    The served model is the members' average (``model.assemble``).

    No class weights: the gate and the scorer need calibrated probabilities (log loss), and reweighting does
    not improve ranking (AUC). Raises ValueError on fewer than ``settings.min_training_rows`` rows or a
    single-class set.
    """
    started = time.perf_counter()
    if len(df) < settings.min_training_rows:
        raise ValueError(f"{len(df)} rows is fewer than min_training_rows={settings.min_training_rows}")
    # A canonical row order: the same rows give the same model whichever partitions they were read from.
    train_df, val_df = time_split(df, TIME_ORDER, fraction=VALIDATION_FRACTION)
    everything = pd.concat([train_df, val_df], ignore_index=True)
    y_all = everything[LABEL].to_numpy(dtype="float32")
    if y_all.min() == y_all.max():
        raise ValueError("training rows hold a single class")
    early, fitted = prep.fit(train_df), prep.fit(everything)
    x_train, y_train = prep.transform(early, train_df), train_df[LABEL].to_numpy(dtype="float32")
    x_val, y_val = prep.transform(early, val_df), val_df[LABEL].to_numpy(dtype="float32")
    x_all = prep.transform(fitted, everything)
    members, histories, best_epochs = [], [], []
    for i in range(model_lib.MEMBERS):  # each member from its own seed, with its own epoch count
        seed = settings.seed + i
        _, history, best_epoch = fit(lambda: model_lib.build(early), x_train, y_train, seed=seed,
                                     epochs=settings.epochs, batch_size=BATCH_SIZE, validation=(x_val, y_val))
        log.info("member %d: early stopping on %d train / %d validation rows (preprocessing %s): best epoch %d "
                 "of %d, val_loss %.4f val_auc %.4f", i, len(train_df), len(val_df), early.fingerprint, best_epoch,
                 len(history["loss"]), history["val_loss"][best_epoch - 1], history["val_auc"][best_epoch - 1])
        member, _, _ = fit(lambda: model_lib.build(fitted), x_all, y_all, seed=seed, epochs=best_epoch,
                           batch_size=BATCH_SIZE)
        members.append(member)
        histories.append(history)
        best_epochs.append(best_epoch)
    model = model_lib.assemble(fitted, members)
    seconds = time.perf_counter() - started
    log.info("trained %d members on %d rows for %s epochs (preprocessing v%d %s) in %.1f s", len(members),
             len(everything), best_epochs, fitted.version, fitted.fingerprint, seconds)
    # The first member's early-stopping history stands for the run (MLflow plots it; each member's best epoch is
    # logged above).
    return TrainResult(model=model, preprocessing=fitted, history=histories[0], rows_train=len(train_df),
                       rows_val=len(val_df), epochs_run=len(histories[0]["loss"]), best_epoch=best_epochs[0],
                       seconds=seconds)
