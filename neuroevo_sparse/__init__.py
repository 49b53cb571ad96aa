"""neuroevo_sparse: genetic-algorithm neuroevolution over sparse topologies.

Data flows one way: config -> evolution -> evaluators -> training -> results -> store.
"""

__version__ = "0.2.0"
