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

    ``x`` and ``y`` are arrays, cut into ``batch_size`` batches and shuffled each epoch by Keras; or ``x`` is a
    ``keras.utils.PyDataset`` of (inputs, labels) batches that orders its own rows each epoch and ``y`` is None
    (``batch_size`` unused): a training set too large to hold as model inputs is streamed. ``validation`` is an
    (x, y) pair of either kind. With ``validation``, training stops once the validation loss has not improved
    for ``patience`` epochs and the best epoch's weights are restored; without, it runs ``epochs`` epochs (the
    last is the best). Raises ValueError on a dataset given with labels.
    """
    import keras

    if isinstance(x, keras.utils.PyDataset):
        if y is not None:
            raise ValueError("a PyDataset yields its own labels: y must be None")
        # Not shuffle=True: Keras would reorder the dataset's batches on top of the dataset's own row order.
        data = {"x": x, "shuffle": False}
    else:
        data = {"x": x, "y": y, "batch_size": batch_size, "shuffle": True}
    keras.utils.set_random_seed(seed)
    model = build()
    callbacks = []
    if validation is not None:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                       restore_best_weights=True))
    fitted = model.fit(**data, epochs=epochs, verbose=0, validation_data=validation, callbacks=callbacks)
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if validation is not None else len(history["loss"])
    return model, history, best
