"""Objectives by name: `--value-model sentiment|clean|PATH`, per-call and per-request value models, chat's
/objective, `vm list` (real Gemma model, real shipped value models)."""

import json

import pytest
from click.testing import CliRunner

from sia_edge.errors import ValueModelError
from sia_edge.models import GEMMA_TOKENIZER, GEMMA_WEIGHTS, OBJECTIVES, SHIPPED, choose_value_model, shipped_value_model_dir
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
    assert choose_value_model("clean", GEMMA_TOKENIZER).path.name == "gemma3-270m-clean.onnx"  # another GGUF
    assert choose_value_model("clean", GEMMA_TOKENIZER, GEMMA_WEIGHTS).path.name == "gemma3-270m-hidden-clean.onnx"
    assert choose_value_model("sentiment", "f" * 64).path.name == "byte-sentiment.onnx"
    with pytest.raises(ValueModelError, match="one of sentiment, clean"):
        choose_value_model("kindness", GEMMA_TOKENIZER)
    with pytest.raises(ValueModelError, match="no clean value model serves tokenizer ffffffffffffffff"):
        choose_value_model("clean", "f" * 64)


def test_a_generation_can_steer_toward_another_objective(engine):
    assert engine.value_model.path.name == "gemma3-270m-sentiment.onnx"
    clean = engine.generate("The referee was", value_model="clean", gate="dense", max_tokens=6, seed=2)
    default = engine.generate("The referee was", gate="dense", max_tokens=6, seed=2)
    # for these exact weights the hidden-state clean model wins over the token one (models.SHIPPED's ranks)
    assert clean.value_model == "gemma3-270m-hidden-clean.onnx" and default.value_model == "gemma3-270m-sentiment.onnx"
    # it carries its measured weight scale (its card: 4.4), which dense's default w of 1 is multiplied by; the
    # sentiment models none
    from sia_edge.value_model import open_value_model

    scale = open_value_model(engine.value_model_for("clean").path).weight_scale
    assert scale == pytest.approx(4.4) and clean.settings["weight"] == pytest.approx(scale)
    assert default.settings["weight"] == 1.0
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
        assert "gemma3-270m-hidden-clean.onnx" in session.command("/objective clean").text
        "".join(session.send("The referee"))
        assert session.last.result.value_model == "gemma3-270m-hidden-clean.onnx"
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
    assert stream.result.value_model == "gemma3-270m-hidden-clean.onnx"


def test_vm_list_shows_the_shipped_models():
    from sia_edge.train.cli import vm

    result = CliRunner().invoke(vm, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    names = {(row["name"], row["input"]) for row in rows}
    assert {("sentiment", "tokens"), ("sentiment", "bytes"), ("clean", "tokens"), ("clean", "hidden")} <= names
    assert all(row["bytes"] > 0 for row in rows)
    table = CliRunner().invoke(vm, ["list"])
    assert "any GGUF" in table.output and "byte-sentiment.onnx" in table.output


@pytest.fixture(scope="module")
def scaled_clean(tmp_path_factory):
    """The shipped `clean` graph twice: without sia_edge.weight_scale, and stamped with 2.5; and one stamped 0."""
    pytest.importorskip("onnx")
    from sia_edge.train.export import stamp_metadata

    folder = tmp_path_factory.mktemp("weight-scale")
    shipped = shipped_value_model_dir() / "gemma3-270m-clean.onnx"
    paths = {name: folder / f"{name}.onnx" for name in ("plain", "scaled", "zero")}
    for name, scale in (("plain", None), ("scaled", "2.5"), ("zero", "0")):
        stamp_metadata(shipped, paths[name], {"weight_scale": scale})
    return paths


@pytest.mark.parametrize("engine_kind", ["alone", "parallel"])
def test_a_value_models_weight_scale_sets_its_default_weight(request, engine_kind, scaled_clean):
    """With no weight given, a model stamped with weight scale 2.5 steers exactly as the same graph without it at
    w = 2.5 x the gate's default (dense 1, entropy 4): the same tokens for the same seed, on the single path and
    through the scheduler. A given weight is used as given. The result reports the weight that ran."""
    engine = request.getfixturevalue("engine" if engine_kind == "alone" else "parallel_engine")
    prompt, seed = "The referee was", 4

    def run(model, gate, weight=None):
        result = engine.generate(prompt, value_model=str(scaled_clean[model]), gate=gate, weight=weight,
                                 max_tokens=16, seed=seed, tau=1.0)
        return result.token_ids, result.settings["weight"]

    for gate, default in (("dense", 1.0), ("entropy", 4.0)):
        assert run("scaled", gate) == run("plain", gate, 2.5 * default)
        assert run("scaled", gate)[1] == pytest.approx(2.5 * default)
        assert run("plain", gate)[1] == default
    assert run("scaled", "dense", 1.0) == run("plain", "dense", 1.0)
    # the equality above is informative: at this prompt and seed, w = 2.5 and w = 1 write different texts
    assert run("plain", "dense", 1.0)[0] != run("plain", "dense", 2.5)[0]


def test_the_weight_scale_is_shown_and_a_bad_one_refused(scaled_clean, gemma_path):
    """`info` shows the scale the chosen value model carries; a model whose scale is not a number > 0 is refused
    at load in one line that names the key, with no traceback."""
    from sia_edge.cli import main

    shown = CliRunner().invoke(main, ["info", "--json", "-m", str(gemma_path), "--value-model",
                                      str(scaled_clean["scaled"])])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["value_model_weight_scale"] == 2.5
    refused = CliRunner().invoke(main, ["generate", "The referee was", "-n", "2", "-m", str(gemma_path),
                                        "--value-model", str(scaled_clean["zero"])])
    assert refused.exit_code != 0
    assert "metadata 'sia_edge.weight_scale' must be a number > 0, got '0'" in refused.output
    assert "Traceback" not in refused.output


def test_eval_records_the_weights_a_scaled_model_ran_with(engine, scaled_clean, tmp_path):
    """run.json's default weights and every sample's weight are the scaled ones."""
    pytest.importorskip("vaderSentiment")
    from sia_edge.evaluation.arms import parse_arms
    from sia_edge.evaluation.run import EvalConfig, read_samples, run_evaluation

    previous = engine.value_model.path
    engine.use_value_model(str(scaled_clean["scaled"]))
    try:
        config = EvalConfig(prompt_file="inline", prompts=["The referee was"], seeds=1, max_tokens=4,
                            arms=parse_arms("dense"))
        run_evaluation(engine, config, tmp_path / "run", progress=False)
    finally:
        engine.use_value_model(str(previous))
    ran = json.loads((tmp_path / "run" / "run.json").read_text())
    assert ran["weight"]["dense"] == 2.5 and ran["weight"]["random"] == 10.0
    weights = {s["arm"]: s["weight"] for s in read_samples(tmp_path / "run" / "samples.jsonl")}
    assert weights == {"dense": 2.5}
