"""A ``.keras`` archive's numpy forward pass, read without Keras or TensorFlow: for a step that only predicts (the
gate), importing TensorFlow cost more than everything else it did.

The archive is a zip of ``config.json`` (the model's config, as ``get_config`` gives it) and ``model.weights.h5``.
Keras stores each layer's variables under ``layers/<its class in snake case>[_<n>]/vars/<i>``, the ``n``-th layer
of that class in the model's layer order (``keras.src.saving.saving_lib._save_container_state``: not by the layer's
name), which is the order of the config's layers. ``archive_plan`` reads them so and checks every layer's variable
count and shapes against its config; a model or file it cannot mirror exactly raises ``UnsupportedModel``, and the
caller loads it with Keras instead.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from ml.numpy_forward import SUPPORTED_LAYERS, ForwardPlan, NumpyForward, UnsupportedModel, config_plan

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"


def _snake_case(name: str) -> str:
    """``keras.src.utils.naming.to_snake_case``: how Keras names a layer's folder in the weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _expected_shapes(kind: str, cfg: Mapping) -> list[tuple[int | None, ...]]:
    """The shapes ``kind``'s variables must have by its config (None: any size, the input width of a Dense)."""
    if kind == "Dense":
        return [(None, cfg["units"]), *([(cfg["units"],)] if cfg.get("use_bias", True) else [])]
    if kind == "Embedding":
        return [(cfg["input_dim"], cfg["output_dim"])]
    return []  # InputLayer, Concatenate, Dropout: no variables


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected, strict=True))


def archive_plan(data: bytes) -> ForwardPlan:
    """The forward plan of the functional model in ``.keras`` archive ``data``. Raises UnsupportedModel for a model
    the numpy pass cannot mirror, or variables that do not match the config; zipfile.BadZipFile, KeyError or
    OSError for a damaged archive."""
    import h5py
    import orjson

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        model = orjson.loads(archive.read(CONFIG_FILE))
        weights_file = archive.read(WEIGHTS_FILE)
    config = model.get("config") or {}
    if model.get("class_name") != "Functional" or "layers" not in config or "output_layers" not in config:
        raise UnsupportedModel(f"{model.get('class_name')!r} is not a functional model")
    by_layer: dict[str, list[np.ndarray]] = {}
    with h5py.File(io.BytesIO(weights_file), "r") as h5:
        stored = h5.get("layers")
        if not isinstance(stored, h5py.Group):
            raise UnsupportedModel(f"{WEIGHTS_FILE} holds no layers")
        seen: dict[str, int] = {}
        folders = []
        for layer in config["layers"]:
            kind = layer["class_name"]
            base = _snake_case(kind)
            seen[base] = seen.get(base, -1) + 1
            folder = base if seen[base] == 0 else f"{base}_{seen[base]}"
            folders.append(folder)
            variables = stored.get(f"{folder}/vars")
            if not isinstance(variables, h5py.Group):
                raise UnsupportedModel(f"layer {layer['name']}: no {folder}/vars in {WEIGHTS_FILE}")
            if kind != "InputLayer" and kind not in SUPPORTED_LAYERS:
                raise UnsupportedModel(f"layer {layer['name']}: {kind} is not supported by the numpy pass")
            weights = [np.asarray(variables[str(i)]) for i in range(len(variables))]
            expected = _expected_shapes(kind, layer["config"])
            if len(weights) != len(expected) or not all(map(_fits, (w.shape for w in weights), expected)):
                raise UnsupportedModel(f"layer {layer['name']} ({kind}): variables of shapes "
                                       f"{[w.shape for w in weights]} in {folder}, expected {expected}")
            by_layer[layer["name"]] = weights
        if set(stored) != set(folders):
            raise UnsupportedModel(f"{WEIGHTS_FILE} holds layers {sorted(set(stored) - set(folders))} the config "
                                   "does not name")
    return config_plan(config, by_layer.__getitem__)


def archive_forward(data: bytes) -> NumpyForward:
    """The numpy pass of ``.keras`` archive ``data`` (``archive_plan``); raises as it does."""
    return NumpyForward.from_plan(archive_plan(data))
