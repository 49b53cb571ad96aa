"""problem: what a run learns from and what it trains.

Owns: the data sets as tensors with seeded train / validation / test splits (data.py:
digits, Fashion-MNIST, MNIST, CIFAR-10, synthetic, or the user's data factory) and the
networks (models.py: the built-in MLP and CNN or the user's module, which tensors are
masked, `Architecture`, the one description of a run's network).

May import: config, seeds.
"""
