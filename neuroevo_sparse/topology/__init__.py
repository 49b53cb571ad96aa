"""topology: sparse structure, independent of how it is searched or trained.

Owns: the mask genome (genome.py: per-layer boolean masks, inherited weights, lineage,
density / parameter / FLOP counts, ERK densities and initialisation, (de)serialisation
without pickle) and the structure-update rules (structure.py: SET, RigL, the seed paper's
two methods, magnitude and gradual pruning), shared by the GA's mutations and by one
network's training (`neuroevo train`).

May import: problem, config, seeds, draws. Numpy only in structure.py.
"""
