"""config: an experiment TOML mapped one-to-one onto frozen, validated dataclasses.

Owns: the schema and its validation (schema.py: every section a dataclass, every key a field;
loading, `--set` overrides, the resolved TOML, the config hash), the user's factories named in
it (plugins.py: import, call, what to ship to Ray workers) and the generated reference page
(doc.py: docs/configuration.md).

May import: nothing else of neuroevo_sparse. It is the bottom of the package, so that every
layer can read a config and a worker can unpickle one without importing anything above.

`from neuroevo_sparse import config; config.load(path)` is the schema's API, re-exported here.
"""

from .schema import (INT64_MAX, RESUME_SAFE_KEYS, ConfigError, DataConfig, EvolutionConfig,  # noqa: F401
                     Experiment, ExperimentConfig, FitnessConfig, ModelConfig, OutputConfig, ResourcesConfig,
                     SparsityConfig, StructureConfig, TrainingConfig, absolute_factory, apply_overrides, diff,
                     factory_is_file, factory_parts, flatten, from_dict, load, to_toml, with_absolute_paths)
