"""Torch models whose prunable tensors have stable, readable names.

A genome refers to tensors by parameter name ("fc1.weight", "conv2.weight"), so layers are
named explicitly rather than numbered by nn.Sequential. Only weight tensors of Linear and
Conv2d layers are maskable by default; biases stay dense unless `mask_biases` is set.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, ModelConfig, SparsityConfig

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh model; its initial weights are irrelevant (genomes carry their own)."""
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


@dataclass(frozen=True)
class LayerInfo:
    """What counting and initialising a maskable tensor needs to know about its layer."""

    shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    positions: int  # output positions each weight is applied at per sample (1 for Linear)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def maskable(model: nn.Module, sparsity: SparsityConfig, mask_biases: bool = False) -> list[str]:
    """Names of the parameters that carry a mask, in forward order.

    A `sparsity.dense_layers` entry that names no maskable tensor is an error, not ignored:
    a misspelt name would otherwise silently mask the layer it meant to keep dense."""
    candidates = []
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            for pname, _ in module.named_parameters(recurse=False):
                if pname == "bias" and not mask_biases:
                    continue
                candidates.append(f"{module_name}.{pname}")
    unknown = [n for n in sparsity.dense_layers if n not in candidates]
    if unknown:
        raise ConfigError([f"sparsity.dense_layers: {', '.join(map(repr, unknown))} name(s) no maskable tensor "
                           f"of this model; its maskable tensors are {', '.join(candidates)}"])
    return [n for n in candidates if n not in sparsity.dense_layers]


def layer_info(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerInfo]:
    """Shape, fans and output positions of every Linear/Conv2d parameter, by a dry forward."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            def hook(mod, inp, out, name=name):
                positions[name] = out[0, 0].numel() if out.dim() == 4 else 1
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    info = {}
    for name, module in model.named_modules():
        if name not in positions:
            continue
        for pname, p in module.named_parameters(recurse=False):
            shape = tuple(p.shape)
            if pname == "weight":
                receptive = p[0, 0].numel() if p.dim() == 4 else 1
                fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
            else:
                fan_in, fan_out = 1, shape[0]
            info[f"{name}.{pname}"] = LayerInfo(shape, fan_in, fan_out, positions[name])
    return info
