"""A small network with BatchNorm (running statistics that train and travel with the genome),
for the determinism property test (tests/test_determinism.py): a module, so Ray workers import it."""

import math

from torch import nn


def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, num_classes))
