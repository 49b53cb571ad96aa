"""neuroevo_sparse: genetic-algorithm neuroevolution over sparse topologies.

Data flows one way, and the subpackages follow it (imports only go down this list):
api / cli / launch -> report -> evolution -> evaluators -> store -> train -> topology ->
problem -> config (docs/architecture.md).

The public API (see `neuroevo_sparse.api`):

    from neuroevo_sparse import load_experiment, evolve, resume, load_run
"""

__version__ = "0.4.6"

_API = ("Experiment", "GenerationInfo", "Run", "evolve", "load_experiment", "load_run", "resume")
__all__ = list(_API)


def __getattr__(name: str):
    # Imported on first use, so `import neuroevo_sparse` (the version, the CLI's start) stays
    # light and torch is not imported until the API is.
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'neuroevo_sparse' has no attribute {name!r}")
