"""What training returns, and the seeded Keras fit with early stopping that the use cases share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.preprocessing import Preprocessing

if TYPE_CHECKING:
    import keras

PATIENCE = 3


@dataclass(frozen=True)
class TrainResult:
    """A trained candidate: the model, the fitted preprocessing it reads, and how training went.

    ``history`` is the Keras history of the fit with early stopping (``val_*`` entries on its validation rows);
    ``best_epoch`` the epoch whose weights were kept (or refitted for).
    """

    model: keras.Model
    preprocessing: Preprocessing
    history: dict[str, list[float]]
    rows_train: int
    rows_val: int
    epochs_run: int
    best_epoch: int
    seconds: float


def fit(build: Callable[[], keras.Model], x: Any, y: Any, *, seed: int, epochs: int, batch_size: int,
        validation: tuple[Any, Any] | None = None, patience: int = PATIENCE
        ) -> tuple[keras.Model, dict[str, list[float]], int]:
    """Build a model from ``seed`` and fit it; returns the model, its history and the best epoch.

    With ``validation``, training stops once the validation loss has not improved for ``patience`` epochs and
    the best epoch's weights are restored; without, it runs ``epochs`` epochs (the last is the best).
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build()
    callbacks = []
    if validation is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                       restore_best_weights=True))
    fitted = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
                       validation_data=validation, callbacks=callbacks)
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if validation is not None else len(history["loss"])
    return model, history, best
