from pathlib import Path

import pytest

from neuroevo_sparse import config
from neuroevo_sparse.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.toml"
    p.write_text(text)
    return p


def problems_of(tmp_path: Path, text: str, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text), overrides)
    return str(e.value)


def test_defaults_are_valid():
    exp = config.from_dict({})
    assert exp.evolution.population == 8 and exp.resources.backend == "auto"


@pytest.mark.parametrize("text", ["", "# just a comment\n\n   \n# another\n"])
def test_an_empty_experiment_is_refused(tmp_path, text):
    assert "sets nothing" in problems_of(tmp_path, text)


def test_unknown_key_is_named_with_suggestion(tmp_path):
    msg = problems_of(tmp_path, "[evolution]\npopulaton = 8\n")
    assert "evolution.populaton: unknown key (did you mean 'population'?)" in msg


def test_unknown_section(tmp_path):
    msg = problems_of(tmp_path, "[evolutoin]\npopulation = 8\n")
    assert "evolutoin: unknown key (did you mean 'evolution'?)" in msg


def test_density_out_of_range(tmp_path):
    assert "sparsity.density: must be in (0.0, 1.0]; got 0" in problems_of(tmp_path, "[sparsity]\ndensity = 0\n")
    assert "sparsity.density: must be in (0.0, 1.0]; got 1.5" in problems_of(tmp_path, "[sparsity]\ndensity = 1.5\n")
    config.load(write(tmp_path, "[sparsity]\ndensity = 1.0\n"))  # 1 (dense) is allowed


def test_population_below_two(tmp_path):
    assert "evolution.population: must be >= 2; got 1" in problems_of(tmp_path, "[evolution]\npopulation = 1\n")


def test_wrong_types(tmp_path):
    msg = problems_of(tmp_path, '[evolution]\npopulation = "eight"\n[model]\nhidden = [128, "x"]\n')
    assert "evolution.population: must be an integer, got 'eight' (str)" in msg
    assert "model.hidden: item 1: must be an integer, got 'x' (str)" in msg


def test_a_number_or_a_word(tmp_path):
    """A key that takes a number or "auto" names both, and checks the number's range."""
    assert config.load(write(tmp_path, '[training]\nvectorise_group = "auto"\n')).training.vectorise_group == "auto"
    assert config.load(write(tmp_path, "[training]\nvectorise_group = 3\n")).training.vectorise_group == 3
    assert ("training.vectorise_group: must be an integer or one of 'auto'; got 'big' (str)"
            in problems_of(tmp_path, '[training]\nvectorise_group = "big"\n'))
    assert "training.vectorise_group: must be >= 1; got 0" in problems_of(tmp_path, "[training]\nvectorise_group = 0\n")


def test_bad_choice_lists_allowed_values(tmp_path):
    msg = problems_of(tmp_path, '[fitness]\nmode = "best"\n')
    assert "fitness.mode: must be one of 'weighted', 'pareto'; got 'best' (str)" in msg


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, "[evolution]\npopulation = 0\ngenerations = -1\n[data]\nbogus = 1\n"))
    assert len(e.value.problems) == 3


def test_malformed_toml(tmp_path):
    assert "not valid TOML" in problems_of(tmp_path, "[evolution\npopulation = 8\n")


def test_cross_field_checks(tmp_path):
    msg = problems_of(tmp_path, '[fitness]\nobjectives = ["val_accuracy", "density"]\nweights = [1.0]\n')
    assert "fitness.weights: needs one weight per objective (2), got 1" in msg
    msg = problems_of(tmp_path, '[fitness]\nmode = "pareto"\nobjectives = ["val_accuracy"]\nweights = [1.0]\n')
    assert 'fitness.mode: "pareto" needs at least two objectives' in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


def test_set_overrides(tmp_path):
    exp = config.load(write(tmp_path, ""), ["evolution.population=12", "data.dataset=fashion_mnist",
                                             "model.hidden=[10, 5]"])
    assert exp.evolution.population == 12
    assert exp.data.dataset == "fashion_mnist"
    assert exp.model.hidden == [10, 5]


def test_set_override_validated_and_malformed(tmp_path):
    assert "evolution.population: must be >= 2; got 1" in problems_of(tmp_path, "", ["evolution.population=1"])
    assert "expected SECTION.KEY=VALUE" in problems_of(tmp_path, "", ["population=3"])


def test_toml_round_trip(tmp_path, tiny):
    p = tmp_path / "resolved.toml"
    p.write_text(config.to_toml(tiny))
    assert config.load(p) == tiny
    assert config.load(p).hash() == tiny.hash()


def test_frozen(tiny):
    with pytest.raises(Exception):
        tiny.evolution.population = 3  # type: ignore[misc]
