"""The network being evolved: built-in families with readable tensor names, or the user's own.

A genome refers to tensors by parameter name ("fc1.weight", "conv2.weight"), so built-in
layers are named explicitly rather than numbered by nn.Sequential. Any nn.Module works as long
as it is built the same way each time (`model.factory`): by default the weights of its Linear
and Conv layers are masked, and `sparsity.include` / `sparsity.exclude` change that.
Biases, norms and buffers (BatchNorm running statistics) stay dense and travel with the genome.

`Architecture` is the one description of a run's network (template, maskable tensors, shapes,
fans, FLOPs): built once on the driver and shared by the evolution, the training spec and the
single-network harness.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config.schema import ConfigError, ModelConfig, SparsityConfig

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


_MASKED_BY_DEFAULT = (nn.Linear, nn.modules.conv._ConvNd)


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
          factory: Callable[..., Any] | None = None) -> nn.Module:
    """A fresh model; its initial weights are irrelevant (genomes carry their own).
    `factory` is `cfg.factory` already resolved (workers get it so and never import by name)."""
    if factory is None and cfg.factory is not None:
        from ..config import plugins
        factory = plugins.resolve(cfg.factory, "model.factory")
    if factory is not None:
        return _from_factory(factory, cfg, input_shape, num_classes)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    act = _ACTIVATIONS[cfg.activation]
    if cfg.kind == "cnn":
        channels, size = input_shape[0], min(input_shape[-2:])
        for i, width in enumerate(cfg.channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
            layers[f"act_c{i}"] = act()
            if size >= 4:  # pool while the feature map is big enough to halve
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                size //= 2
            channels = width
    layers["flatten"] = nn.Flatten()
    with torch.no_grad():
        features = nn.Sequential(layers)(torch.zeros(1, *input_shape)).shape[1]
    for i, width in enumerate(cfg.hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(features, width)
        layers[f"act{i}"] = act()
        features = width
    layers["out"] = nn.Linear(features, num_classes)
    return nn.Sequential(layers)


def _from_factory(factory: Callable[..., Any], cfg: ModelConfig, input_shape: tuple[int, ...],
                  num_classes: int) -> nn.Module:
    from ..config import plugins
    model = plugins.call(factory, dict(cfg.args), "model.factory", input_shape=tuple(input_shape),
                         num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError([f"model.factory: {cfg.factory or factory!r} returned a {type(model).__name__}, "
                           f"not a torch.nn.Module"])
    return model


def check_output(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """A network must map a batch (B, *input_shape) to logits (B, num_classes): say so at the
    start, not as a shape error inside every training job."""
    x = torch.zeros(2, *input_shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:
        raise ConfigError([f"model.factory: the network fails on a batch of inputs of shape {tuple(x.shape)} "
                           f"(the data's): {type(e).__name__}: {str(e)[:300]}"]) from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError([f"model.factory: the network maps inputs {tuple(x.shape)} to {got}; it must give "
                           f"(2, {num_classes}): one logit per class of the data"])


@dataclass(frozen=True)
class LayerInfo:
    """What counting and initialising a maskable tensor needs to know about its layer."""

    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    positions: int  # output positions each weight is applied at per sample (1 for Linear)
    # "weight" of a Linear/Conv layer (unmasked ones get the run's init rule), its "bias"
    # (starts at 0), or any "other" parameter (starts as the template has it: norms at 1, ...)
    role: str = "weight"

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def maskable(model: nn.Module, sparsity: SparsityConfig, mask_biases: bool = False) -> list[str]:
    """Names of the parameters that carry a mask, in the model's order.

    Default: the weights of every Linear and Conv layer (and their biases with `mask_biases`);
    `sparsity.include` replaces that set by the parameters its patterns match, `exclude` and
    `dense_layers` take names out. A pattern or name that matches nothing is an error, not
    ignored: a misspelt name would otherwise silently mask the layer it meant to keep dense."""
    params = [n for n, _ in model.named_parameters()]
    default = []
    for module_name, module in model.named_modules():
        if isinstance(module, _MASKED_BY_DEFAULT):
            for pname, _ in module.named_parameters(recurse=False):
                if pname == "weight" or (pname == "bias" and mask_biases):
                    default.append(f"{module_name}.{pname}" if module_name else pname)
    problems = []
    unknown = [n for n in sparsity.dense_layers if n not in default]
    if unknown:
        problems.append(f"sparsity.dense_layers: {', '.join(map(repr, unknown))} name(s) no maskable tensor "
                        f"of this model; its maskable tensors are {', '.join(default)}")

    def matching(key: str, patterns: list[str], among: list[str]) -> set[str]:
        found = set()
        for pattern in patterns:
            hits = fnmatch.filter(among, pattern)
            if not hits:
                problems.append(f"{key}: {pattern!r} matches no parameter of this model; its parameters are "
                                f"{', '.join(among[:40])}{' ...' if len(among) > 40 else ''}")
            found.update(hits)
        return found

    chosen = matching("sparsity.include", sparsity.include, params) if sparsity.include else set(default)
    dropped = matching("sparsity.exclude", sparsity.exclude, params) | set(sparsity.dense_layers)
    out = [n for n in params if n in chosen and n not in dropped]
    if not problems and not out:
        problems.append("sparsity: no parameter is left to mask (include/exclude/dense_layers leave none): "
                        "there would be nothing to evolve")
    if problems:
        raise ConfigError(problems)
    return out


def layer_info(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerInfo]:
    """Shape, fans and output positions of every parameter, by a dry forward (eval mode, so no
    running statistic moves). Linear and Conv weights get their layer's fans and the positions
    each weight is applied at per sample (the spatial size of a conv's output, the tokens of a
    Linear applied to a sequence); any other parameter counts as applied once per sample."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _MASKED_BY_DEFAULT):
            def hook(mod, inp, out, name=name):
                if isinstance(mod, nn.Linear):
                    positions[name] = max(1, out[0].numel() // out.shape[-1]) if out.dim() > 1 else 1
                else:  # conv: (B, C, *spatial)
                    positions[name] = out[0, 0].numel()
            hooks.append(module.register_forward_hook(hook))
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    info = {}
    modules = dict(model.named_modules())
    for full, p in model.named_parameters():
        owner, _, pname = full.rpartition(".")
        module = modules.get(owner)
        shape = tuple(p.shape)
        if isinstance(module, _MASKED_BY_DEFAULT) and pname == "weight":
            receptive = p[0, 0].numel() if p.dim() > 2 else 1
            fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            info[full] = LayerInfo(shape, fan_in, fan_out, positions.get(owner, 1))
        elif isinstance(module, _MASKED_BY_DEFAULT) and pname == "bias":
            info[full] = LayerInfo(shape, 1, shape[0], positions.get(owner, 1), "bias")
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            info[full] = LayerInfo(shape, fan_in, shape[0] if shape else 1, 1, "other")
    return info


@dataclass(frozen=True)
class Builder:
    """How a worker builds the network: plain config plus the resolved factory, if any (Ray
    pickles it by reference, so the worker imports the same module)."""

    model: ModelConfig
    input_shape: tuple[int, ...]
    num_classes: int
    factory: Callable[..., Any] | None = None

    def __call__(self) -> nn.Module:
        return build(self.model, self.input_shape, self.num_classes, self.factory)


class Architecture:
    """The network of a run, described once: how to build it, the template state (every
    parameter and buffer), which tensors are masked, their shapes, fans and FLOPs.

    The template is built under a torch generator seeded from the run's seed, so tensors that
    start as built (norms, a user's own parameters) are the same on every machine."""

    def __init__(self, builder: Builder, sparsity: SparsityConfig, seed: int):
        from ..seeds import derive

        self.builder = builder
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive(seed, "template") % 2 ** 63)
            model = builder()
        if builder.factory is not None:
            check_output(model, builder.input_shape, builder.num_classes)
        self.info = layer_info(model, builder.input_shape)
        self.maskable = maskable(model, sparsity, builder.model.mask_biases)
        self.template = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        self.parameters = sum(p.numel() for p in model.parameters())

    @classmethod
    def of(cls, exp: Any, input_shape: tuple[int, ...], num_classes: int,
           factory: Callable[..., Any] | None = None) -> "Architecture":
        """The network of `exp`; its `model.factory` (if any) imported here, once, unless the
        caller passes it already imported."""
        if factory is None and exp.model.factory is not None:
            from ..config import plugins
            factory = plugins.resolve(exp.model.factory, "model.factory")
        return cls(Builder(exp.model, tuple(input_shape), num_classes, factory), exp.sparsity, exp.experiment.seed)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.builder.input_shape

    @property
    def num_classes(self) -> int:
        return self.builder.num_classes

    def build(self) -> nn.Module:
        return self.builder()

    def is_chain(self) -> bool:
        """A built-in MLP: the vectorised path runs it as a chain of batched (sparse) matmuls."""
        return self.builder.factory is None and self.builder.model.kind == "mlp"
