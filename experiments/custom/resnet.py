"""A small residual CNN with BatchNorm: an example of bringing your own nn.Module.

Named in resnet.toml as `model.factory = "resnet.py:ResidualCNN"`. Any callable returning an
nn.Module works; `input_shape` and `num_classes` are passed because the constructor names them,
the rest comes from `model.args`. Nothing here knows about masks or evolution.
"""

from __future__ import annotations

from torch import nn


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (He et al. 2016)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        h = self.bn1(self.conv1(x)).relu()
        return (x + self.bn2(self.conv2(h))).relu()


class ResidualCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16, blocks: int = 2):
        super().__init__()
        channels = input_shape[0] if len(input_shape) == 3 else 1
        self.stem = nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        if x.dim() == 2:  # flat features of a square image
            side = int(x.shape[1] ** 0.5)
            x = x.view(-1, 1, side, side)
        h = self.blocks(self.bn(self.stem(x)).relu())
        return self.fc(h.mean((2, 3)))
