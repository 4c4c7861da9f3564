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

from ml.numpy_forward import ForwardPlan, NumpyForward, UnsupportedModel, config_plan

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
    return []  # Concatenate, Dropout: no variables


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected, strict=True))


def _folders(layers: list[Mapping]) -> dict[str, str]:
    """Layer name -> its folder in the weights file: its class in snake case, with ``_<n>`` for the ``n``-th
    (from 1) later layer of that class (``keras.src.saving.saving_lib._get_unique_name``)."""
    seen: dict[str, int] = {}
    folders = {}
    for layer in layers:
        base = _snake_case(layer["class_name"])
        seen[base] = seen.get(base, -1) + 1
        folders[layer["name"]] = base if seen[base] == 0 else f"{base}_{seen[base]}"
    return folders


def archive_plan(data: bytes) -> ForwardPlan:
    """The forward plan of the functional model in ``.keras`` archive ``data``. Raises UnsupportedModel for a model
    the numpy pass cannot mirror (``config_plan`` refuses its layers), or variables that do not match the config;
    zipfile.BadZipFile, KeyError or OSError for a damaged archive."""
    import h5py
    import orjson

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        model = orjson.loads(archive.read(CONFIG_FILE))
        weights_file = archive.read(WEIGHTS_FILE)
    config = model.get("config") or {}
    if model.get("class_name") != "Functional" or "layers" not in config or "output_layers" not in config:
        raise UnsupportedModel(f"{model.get('class_name')!r} is not a functional model")
    layers = {layer["name"]: layer for layer in config["layers"]}
    folders = _folders(config["layers"])
    with h5py.File(io.BytesIO(weights_file), "r") as h5:
        stored = h5.get("layers")
        if not isinstance(stored, h5py.Group):
            raise UnsupportedModel(f"{WEIGHTS_FILE} holds no layers")

        def weights(name: str) -> list[np.ndarray]:  # of a layer config_plan supports
            layer, folder = layers[name], folders[name]
            variables = stored.get(f"{folder}/vars")
            if not isinstance(variables, h5py.Group):
                raise UnsupportedModel(f"layer {name}: no {folder}/vars in {WEIGHTS_FILE}")
            found = [np.asarray(variables[str(i)]) for i in range(len(variables))]
            expected = _expected_shapes(layer["class_name"], layer["config"])
            if len(found) != len(expected) or not all(map(_fits, (w.shape for w in found), expected)):
                raise UnsupportedModel(f"layer {name} ({layer['class_name']}): variables of shapes "
                                       f"{[w.shape for w in found]} in {folder}, expected {expected}")
            return found

        plan = config_plan(config, weights)
        if extra := sorted(set(stored) - set(folders.values())):
            raise UnsupportedModel(f"{WEIGHTS_FILE} holds layers {extra} the config does not name")
    return plan


def archive_forward(data: bytes) -> NumpyForward:
    """The numpy pass of ``.keras`` archive ``data`` (``archive_plan``); raises as it does."""
    return NumpyForward.from_plan(archive_plan(data))
