"""The reference pages that are generated from the code are the code's: a key added to the
config without its page regenerated, or without a comment saying what it means, fails here."""

from pathlib import Path

from neuroevo_sparse.config import doc as config_doc

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_page_is_what_the_dataclasses_generate():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config_doc.markdown(), (
        "docs/configuration.md is out of date: neuroevo config --doc > docs/configuration.md")


def test_every_key_is_on_the_page_and_says_what_it_means():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert len(config_doc.keys()) > 90
    for key in config_doc.keys():
        section, name = key.split(".")
        assert f"## [{section}]" in page and f"| `{name}` |" in page, key
    assert config_doc.undocumented() == [], "write a comment above these fields in config.py"


def test_a_field_comment_is_read_from_the_source(tmp_path):
    from neuroevo_sparse.config import EvolutionConfig, SparsityConfig
    comments = config_doc.field_comments(EvolutionConfig)
    assert comments["population"] == "Individuals kept from one generation to the next."
    shared = config_doc.field_comments(SparsityConfig)
    assert shared["min_density"] == shared["max_density"] != ""
