"""resources.backend = "auto": in this process on one machine, Ray when a cluster is named."""

from __future__ import annotations

from dataclasses import replace

import pytest

from neuroevo_sparse.config import ResourcesConfig
from neuroevo_sparse.evaluators import choose


@pytest.mark.parametrize("backend, address, env, expected", [
    ("auto", None, None, "local"),
    ("auto", "", None, "local"),
    ("auto", "127.0.0.1:6379", None, "ray"),
    ("auto", None, "127.0.0.1:6379", "ray"),
    ("ray", None, None, "ray"),
    ("local", "127.0.0.1:6379", None, "local"),
])
def test_auto_takes_ray_only_for_a_named_cluster(monkeypatch, backend, address, env, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    chosen, why = choose(replace(ResourcesConfig(), backend=backend, address=address))
    assert chosen == expected and why
    if backend == "auto" and expected == "ray":
        assert ("RAY_ADDRESS" if env else "resources.address") in why


def test_the_default_is_auto_and_the_log_says_which_once(tiny, tmp_path, caplog, monkeypatch):
    from neuroevo_sparse import launch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ResourcesConfig().backend == "auto"
    exp = replace(tiny, resources=replace(tiny.resources, backend="auto"),
                  evolution=replace(tiny.evolution, generations=0))
    with caplog.at_level("INFO", logger="neuroevo_sparse"):
        launch.start(exp, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend:")]
    assert lines == ["backend: in this process (one machine, no Ray cluster named (--address, resources.address "
                     "or RAY_ADDRESS); resources.backend = \"ray\" starts a local Ray instead)"]
