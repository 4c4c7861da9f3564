"""Checks a model must pass before it may serve: its archive is within the size limit, its feature contract
fits the input topic (the use case's ``parse_contract``) and the model, and it scores a canary batch with fit
outputs that match Keras.

Each failed check raises ``ModelRefused`` with a ``kind`` (the label of the rejected-models counter).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from scoring_service.inference import NumpyForward

if TYPE_CHECKING:
    from scoring_service.use_cases import ScoringUseCase

# Largest difference between the numpy pass and Keras on the canary batch: float32 sums in another order.
MAX_KERAS_DIFF = 1e-5


class ModelRefused(ValueError):
    """A model was refused; ``kind`` names the check that refused it (signature, contract, architecture,
    canary, load, ...), ``version`` the model version of a verified envelope (None when the envelope itself
    was refused, or before it was read)."""

    def __init__(self, kind: str, reason: str, version: int | None = None) -> None:
        self.kind = kind
        self.reason = reason
        self.version = version
        super().__init__(f"{kind}: {reason}")


def check_archive(artifact: bytes, limit: int) -> None:
    """Raises ModelRefused unless ``artifact`` is a zip archive (as ``.keras`` files are) whose size, packed
    and unpacked, is within ``limit`` bytes (MAX_MODEL_BYTES): a zip bomb is refused before it is read."""
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as e:
        raise ModelRefused("load", f"artifact is not a .keras archive: {e}") from e
    if max(len(artifact), unpacked) > limit:
        raise ModelRefused("oversized", f"artifact unpacks to {unpacked} bytes, limit {limit} (MAX_MODEL_BYTES)")


def warm_up(use_case: ScoringUseCase, contract: Any, forward: NumpyForward,
            keras_output: Callable[[dict[str, np.ndarray]], np.ndarray], rows: int) -> np.ndarray:
    """Score the canary batch; raises ModelRefused unless the model fits the contract, its outputs pass the
    use case's checks and equal Keras's own (``keras_output`` of the same inputs) within MAX_KERAS_DIFF.
    Returns the outputs."""
    problems = use_case.model_problems(contract, forward)
    if problems:
        raise ModelRefused("architecture", "; ".join(problems[:5]))
    rows = max(rows, 2)
    x = use_case.canary_inputs(contract, rows)
    try:
        out = forward(x)
    except (ValueError, IndexError) as e:
        raise ModelRefused("canary", f"numpy pass failed: {e}") from e
    problems = use_case.output_problems(contract, out, rows)
    if problems:
        raise ModelRefused("canary", "; ".join(problems))
    reference = np.asarray(keras_output(x)).reshape(out.shape)
    diff = float(np.max(np.abs(reference - out)))
    if not diff <= MAX_KERAS_DIFF:
        raise ModelRefused("canary", f"numpy pass differs from Keras by {diff:.3g} (> {MAX_KERAS_DIFF})")
    return out
