"""Objectives by name: `--value-model sentiment|clean|PATH`, per-call and per-request value models, chat's
/objective, `vm list` (real Gemma model, real shipped value models)."""

import json

import pytest
from click.testing import CliRunner

from sia_edge.errors import ValueModelError
from sia_edge.models import GEMMA_TOKENIZER, OBJECTIVES, SHIPPED, choose_value_model, shipped_value_model_dir
from sia_edge.settings import GenerationSettings


def test_every_shipped_model_is_in_the_package_and_declares_its_objective():
    from sia_edge.value_model import open_value_model

    for model in SHIPPED:
        path = shipped_value_model_dir() / model.file
        assert path.is_file(), model.file
        loaded = open_value_model(path)
        assert loaded.metadata.get("objective", "").startswith(model.objective) or \
            model.objective in loaded.metadata.get("objective", ""), (model.file, loaded.metadata.get("objective"))
        assert loaded.input == model.input
    assert set(OBJECTIVES) >= {"sentiment", "clean"}


def test_names_resolve_per_tokenizer_and_unknown_names_list_the_known_ones(monkeypatch):
    monkeypatch.delenv("SIA_EDGE_VALUE_MODEL", raising=False)
    assert choose_value_model("clean", GEMMA_TOKENIZER).path.name == "gemma3-270m-clean.onnx"
    assert choose_value_model("sentiment", "f" * 64).path.name == "byte-sentiment.onnx"
    with pytest.raises(ValueModelError, match="one of sentiment, clean"):
        choose_value_model("kindness", GEMMA_TOKENIZER)
    with pytest.raises(ValueModelError, match="no clean value model serves tokenizer ffffffffffffffff"):
        choose_value_model("clean", "f" * 64)


def test_a_generation_can_steer_toward_another_objective(engine):
    assert engine.value_model.path.name == "gemma3-270m-sentiment.onnx"
    clean = engine.generate("The referee was", value_model="clean", gate="dense", max_tokens=6, seed=2)
    default = engine.generate("The referee was", gate="dense", max_tokens=6, seed=2)
    assert clean.value_model == "gemma3-270m-clean.onnx" and default.value_model == "gemma3-270m-sentiment.onnx"
    assert engine.value_model.path.name == "gemma3-270m-sentiment.onnx"  # the engine's default is unchanged
    assert engine.value_model_for("clean") is engine.value_model_for("clean")  # loaded once
    unsteered = engine.generate("Hi", gate="none", max_tokens=2, seed=1)
    assert unsteered.value_model is None


def test_chat_objective_command(engine):
    from sia_edge.chat import ChatSession

    session = ChatSession(engine, GenerationSettings(max_tokens=4, seed=1))
    try:
        assert "usage" in session.command("/objective").text
        assert "not changed" in session.command("/objective kindness").text
        assert "gemma3-270m-clean.onnx" in session.command("/objective clean").text
        "".join(session.send("The referee"))
        assert session.last.result.value_model == "gemma3-270m-clean.onnx"
    finally:
        engine.use_value_model("sentiment")
    # the objective's shipped model for these weights: the hidden-state one
    assert engine.value_model.path.name == "gemma3-270m-hidden-sentiment.onnx"
    from conftest import TOKEN_MODEL

    engine.use_value_model(str(TOKEN_MODEL))  # the session engine's model, for the tests after this one


def test_server_requests_name_an_objective(engine):
    from sia_edge.commands.serve import ApiError, CompletionRequest, Server

    server = Server([engine], GenerationSettings(), notify=lambda message: None)
    served = server.served(None)
    with pytest.raises(ApiError) as err:
        server.settings(served, CompletionRequest(prompt="x", objective="kindness"), max_tokens=4)
    assert err.value.status == 400 and err.value.param == "objective" and "sentiment, clean" in err.value.message
    settings = server.settings(served, CompletionRequest(prompt="x", objective="clean"), max_tokens=4)
    stream = server.open_stream(served, engine.tokenize("The referee"), settings, cancel=None, objective="clean")
    list(stream)
    assert stream.result.value_model == "gemma3-270m-clean.onnx"


def test_vm_list_shows_the_shipped_models():
    from sia_edge.train.cli import vm

    result = CliRunner().invoke(vm, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = {(row["name"], row["input"]) for row in rows}
    assert {("sentiment", "tokens"), ("sentiment", "bytes"), ("clean", "tokens")} <= names
    assert all(row["bytes"] > 0 for row in rows)
    table = CliRunner().invoke(vm, ["list"])
    assert "any GGUF" in table.output and "byte-sentiment.onnx" in table.output
