"""Checks a model must pass before it may serve: its archive is within the size limit, its fitted preprocessing
belongs to the use case and can read the input topic, the model's inputs are what the preprocessing yields, and
it scores a canary batch (the use case's canary records through the real preprocessing, then random rows) with
outputs of the right shape and range that match Keras's own.

Each failed check raises ``ModelRefused`` with a ``kind`` (the label of the rejected-models counter).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ml.numpy_forward import NumpyForward
from ml.preprocessing import Preprocessing
from ml.use_cases import UseCase

# Largest difference between the numpy pass and Keras on the canary batch: float32 sums in another order.
MAX_KERAS_DIFF = 1e-5


class ModelRefused(ValueError):
    """A model was refused; ``kind`` names the check that refused it (signature, preprocessing, architecture,
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


def read_preprocessing(use_case: UseCase, data: Mapping[str, Any]) -> Preprocessing:
    """The envelope's fitted preprocessing; ModelRefused("preprocessing") when it is not the use case's, is
    invalid, or cannot read the input topic."""
    try:
        preprocessing = use_case.load_preprocessing(data)
    except ValueError as e:  # pydantic's ValidationError is a ValueError too
        raise ModelRefused("preprocessing", f"invalid {use_case.name} preprocessing: {str(e)[:300]}") from e
    problems = use_case.check_preprocessing(preprocessing)
    if problems:
        raise ModelRefused("preprocessing", f"preprocessing {preprocessing.fingerprint} does not fit "
                                            f"{use_case.input_contract.__name__}: {'; '.join(problems[:5])}")
    return preprocessing


def model_problems(use_case: UseCase, preprocessing: Preprocessing, forward: NumpyForward) -> list[str]:
    """Why the model's inputs are not what the preprocessing yields (names, row shapes, embedding sizes)."""
    expected = use_case.input_shapes(preprocessing)
    have = {spec.name: spec.row_shape for spec in forward.inputs}
    problems = []
    if set(have) != set(expected):
        problems.append(f"model inputs {sorted(have)} != preprocessing inputs {sorted(expected)}")
    for name in sorted(set(have) & set(expected)):
        if have[name] != tuple(expected[name]):
            problems.append(f"{name}: model row shape {have[name]}, the preprocessing gives {tuple(expected[name])}")
    for name, size in use_case.index_ranges(preprocessing).items():
        rows = forward.embedding_sizes.get(name)
        if rows is not None and rows < size:
            problems.append(f"{name}: embedding has {rows} rows, the preprocessing indexes up to {size - 1}")
    return problems


def canary_inputs(use_case: UseCase, preprocessing: Preprocessing, rows: int) -> dict[str, np.ndarray]:
    """The use case's canary records through its preprocessing, then random rows up to ``rows``: normal noise
    for numeric inputs, every index for integer ones."""
    real = use_case.transform(preprocessing, use_case.canary_records(preprocessing))
    ranges = use_case.index_ranges(preprocessing)
    rng = np.random.default_rng(0)
    n = max(rows - len(next(iter(real.values()))), 1)
    out = {}
    for name, shape in use_case.input_shapes(preprocessing).items():
        noise = (rng.integers(0, ranges[name], (n, *shape), dtype=real[name].dtype) if name in ranges
                 else rng.normal(size=(n, *shape)).astype(real[name].dtype))
        out[name] = np.concatenate([real[name], noise])
    return out


def output_problems(use_case: UseCase, preprocessing: Preprocessing, output: np.ndarray, rows: int) -> list[str]:
    """Why the canary output is unfit to serve: its shape, a non-finite value, a value out of bounds."""
    expected = (rows, *use_case.output_shape(preprocessing))
    if output.shape != expected and not (expected[1:] == (1,) and output.shape == (rows,)):
        return [f"output shape {output.shape}, expected {expected}"]
    if not np.all(np.isfinite(output)):
        return [f"{int(np.sum(~np.isfinite(output)))} non-finite output(s) on the canary batch"]
    bounds = use_case.output_bounds
    if bounds is not None and (output.min() < bounds[0] or output.max() > bounds[1]):
        return [f"outputs outside [{bounds[0]}, {bounds[1]}]: min {output.min()}, max {output.max()}"]
    return []


def warm_up(use_case: UseCase, preprocessing: Preprocessing, forward: NumpyForward,
            keras_output: Callable[[dict[str, np.ndarray]], np.ndarray], rows: int) -> np.ndarray:
    """Score the canary batch; raises ModelRefused unless the model fits the preprocessing, its outputs pass
    the checks above and equal Keras's own (``keras_output`` of the same inputs) within MAX_KERAS_DIFF.
    Returns the outputs."""
    problems = model_problems(use_case, preprocessing, forward)
    if problems:
        raise ModelRefused("architecture", "; ".join(problems[:5]))
    rows = max(rows, 2)
    try:
        x = canary_inputs(use_case, preprocessing, rows)
    except ValueError as e:  # the use case's canary records do not go through its own preprocessing
        raise ModelRefused("canary", f"canary records: {e}") from e
    rows = len(next(iter(x.values())))
    try:
        out = forward(x)
    except (ValueError, IndexError) as e:
        raise ModelRefused("canary", f"numpy pass failed: {e}") from e
    problems = output_problems(use_case, preprocessing, out, rows)
    if problems:
        raise ModelRefused("canary", "; ".join(problems))
    reference = np.asarray(keras_output(x)).reshape(out.shape)
    diff = float(np.max(np.abs(reference - out)))
    if not diff <= MAX_KERAS_DIFF:
        raise ModelRefused("canary", f"numpy pass differs from Keras by {diff:.3g} (> {MAX_KERAS_DIFF})")
    return out
