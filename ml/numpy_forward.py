"""Inference without Keras on the hot path: an exact numpy forward pass derived from a model's weights.

``model.predict`` has a large fixed cost per call whatever the batch, a numpy pass over the same weights a
tiny one (docs/performance.md). ``forward_plan`` walks the functional graph recorded in the
model's config (layers in topological order, each with the tensors it reads) into a plain, picklable
``ForwardPlan`` (configs and weight arrays), which the model loader process hands to the scorer;
``NumpyForward.from_plan`` turns it into one numpy function per layer. Only Dense, Embedding, Concatenate and
Dropout layers are supported (what the use cases' models are built of); any other layer refuses the model
(``UnsupportedModel``) rather than being approximated. The watcher checks each new model's pass against Keras itself
on the canary batch before it may serve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def _identity(x: Array) -> Array:
    return x


def _relu(x: Array) -> Array:
    return np.maximum(x, 0, out=x)  # x is a fresh layer output: safe to overwrite


def _sigmoid(x: Array) -> Array:
    # exp overflows to inf for very negative logits, and 1 / (1 + inf) is the correct limit, 0.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": _identity, "relu": _relu, "sigmoid": _sigmoid, "tanh": np.tanh,
}


class UnsupportedModel(ValueError):
    """The model holds a layer, activation or option the numpy pass does not implement exactly."""


@dataclass(frozen=True)
class _Step:
    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., Array]


def _history(tensor: Mapping) -> str:
    if tensor.get("class_name") != "__keras_tensor__":
        raise UnsupportedModel(f"layer input is not a tensor: {tensor!r:.200}")
    name, node, index = tensor["config"]["keras_history"]
    if node != 0 or index != 0:
        raise UnsupportedModel(f"shared layers / multi-output layers are not supported ({name}, {node}, {index})")
    return name


def _inbound(layer_cfg: Mapping) -> tuple[str, ...]:
    nodes = layer_cfg.get("inbound_nodes") or []
    if len(nodes) != 1:
        raise UnsupportedModel(f"layer {layer_cfg['name']} is called {len(nodes)} times")
    args = nodes[0]["args"]
    if len(args) != 1:
        raise UnsupportedModel(f"layer {layer_cfg['name']} takes {len(args)} positional inputs")
    arg = args[0]
    return tuple(_history(t) for t in arg) if isinstance(arg, list) else (_history(arg),)


def _dense(cfg: Mapping, weights: list[Array]) -> Callable[[Array], Array]:
    activation = cfg.get("activation")
    if activation not in _ACTIVATIONS:
        raise UnsupportedModel(f"Dense {cfg['name']}: activation {activation!r}")
    if cfg.get("quantization_config") or cfg.get("lora_rank"):
        raise UnsupportedModel(f"Dense {cfg['name']}: quantised / LoRA layers")
    kernel = np.ascontiguousarray(weights[0], dtype=np.float32)
    bias = np.asarray(weights[1], dtype=np.float32) if cfg.get("use_bias", True) else None
    act = _ACTIVATIONS[activation]

    def dense(x: Array) -> Array:
        y = x @ kernel
        if bias is not None:
            y += bias
        return act(y)

    return dense


def _embedding(cfg: Mapping, weights: list[Array]) -> Callable[[Array], Array]:
    if cfg.get("mask_zero") or cfg.get("quantization_config") or cfg.get("lora_rank"):
        raise UnsupportedModel(f"Embedding {cfg['name']}: masking / quantised / LoRA layers")
    table = np.ascontiguousarray(weights[0], dtype=np.float32)
    # An index out of range raises IndexError: the admission check (index_ranges) guarantees none is fed.
    return lambda ids: table[ids]


def _concatenate(cfg: Mapping) -> Callable[..., Array]:
    axis = cfg.get("axis", -1)
    if axis not in (-1, 1):
        raise UnsupportedModel(f"Concatenate {cfg['name']}: axis {axis}")
    return lambda *parts: np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name (a key of ``features.transform``) and the shape of one row."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class LayerPlan:
    """One computing layer: its kind, Keras config, the layers it reads, and its weights."""

    name: str
    kind: str
    config: dict
    sources: tuple[str, ...]
    weights: list[Array]


@dataclass(frozen=True)
class ForwardPlan:
    """A functional model as plain data (picklable, no Keras objects): what ``NumpyForward`` is built from."""

    inputs: list[InputSpec]
    layers: list[LayerPlan]
    output: str


_SUPPORTED = ("Dense", "Embedding", "Concatenate", "Dropout")


def forward_plan(model) -> ForwardPlan:
    """The plan of a functional Keras model; raises UnsupportedModel for anything the pass cannot mirror."""
    config = model.get_config()
    if "layers" not in config or "output_layers" not in config:
        raise UnsupportedModel(f"{type(model).__name__} is not a functional model")
    return config_plan(config, lambda name: [np.asarray(w) for w in model.get_layer(name).get_weights()])


def config_plan(config: Mapping, weights: Callable[[str], list[Array]]) -> ForwardPlan:
    """The plan of a functional model's config (``get_config()``, or the ``config`` of a ``.keras`` archive's
    ``config.json``) with ``weights(layer name)`` giving each computing layer's weights; raises UnsupportedModel."""
    outputs = config["output_layers"]
    if outputs and isinstance(outputs[0], str):  # a single output is stored unwrapped
        outputs = [outputs]
    if len(outputs) != 1:
        raise UnsupportedModel(f"model has {len(outputs)} outputs, expected 1")
    inputs, layers = [], []
    for layer_cfg in config["layers"]:
        kind, cfg, name = layer_cfg["class_name"], layer_cfg["config"], layer_cfg["name"]
        dtype = (cfg.get("dtype") or {})
        policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if kind == "InputLayer":
            inputs.append(InputSpec(name, tuple(cfg["batch_shape"][1:]), cfg.get("dtype", "float32")))
            continue
        if policy not in (None, "float32"):
            raise UnsupportedModel(f"layer {name}: dtype policy {policy!r}")
        if kind not in _SUPPORTED:
            raise UnsupportedModel(f"layer {name}: {kind} is not supported by the numpy pass")
        layers.append(LayerPlan(name, kind, cfg, _inbound(layer_cfg), weights(name)))
    output = _history({"class_name": "__keras_tensor__", "config": {"keras_history": outputs[0]}})
    return ForwardPlan(inputs, layers, output)


class NumpyForward:
    """A functional Keras model as numpy steps; ``__call__(inputs)`` returns the output layer's (n, units)
    float32 array (e.g. a probability per row, or an autoencoder's reconstruction)."""

    def __init__(self, inputs: list[InputSpec], steps: list[_Step], output: str,
                 embedding_sizes: dict[str, int]) -> None:
        self.inputs = inputs
        self.steps = steps
        self.output = output
        # Input name -> rows of the embedding table it indexes (admission compares them with the preprocessing).
        self.embedding_sizes = embedding_sizes

    @classmethod
    def from_plan(cls, plan: ForwardPlan) -> NumpyForward:
        """The pass of a plan; raises UnsupportedModel for a layer option it does not implement exactly."""
        steps, embedding_sizes = [], {}
        for layer in plan.layers:
            if layer.kind == "Dense":
                fn = _dense(layer.config, layer.weights)
            elif layer.kind == "Embedding":
                fn = _embedding(layer.config, layer.weights)
                embedding_sizes[layer.sources[0]] = int(layer.config["input_dim"])
            elif layer.kind == "Concatenate":
                fn = _concatenate(layer.config)
            elif layer.kind == "Dropout":
                fn = _identity  # dropout is off at inference
            else:
                raise UnsupportedModel(f"layer {layer.name}: {layer.kind} is not supported by the numpy pass")
            steps.append(_Step(layer.name, layer.sources, fn))
        return cls(plan.inputs, steps, plan.output, embedding_sizes)

    @classmethod
    def from_keras(cls, model) -> NumpyForward:
        """Derive the pass from a functional Keras model in this process (tests; the scorer uses a plan)."""
        return cls.from_plan(forward_plan(model))

    def __call__(self, inputs: Mapping[str, Array]) -> Array:
        values: dict[str, Array] = {}
        for spec in self.inputs:
            x = inputs[spec.name]
            values[spec.name] = x.astype(np.float32, copy=False) if spec.dtype == "float32" else x
        for step in self.steps:
            values[step.name] = step.fn(*(values[s] for s in step.inputs))
        return values[self.output]
