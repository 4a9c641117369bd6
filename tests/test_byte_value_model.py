"""The byte-level value model (contract 2) on the real GGUFs: Gemma 3's 262k SentencePiece vocabulary with
byte-fallback tokens and SmolLM2's 49k byte-level BPE. What the value model receives is recorded at the
onnxruntime call, so these tests see exactly the bytes the graph reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_edge.errors import TokenizerMismatchError, ValueModelError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "sia_edge" / "models"
BYTE_MODEL = SHIPPED / "byte-sentiment.onnx"
CONTROL = 8  # llama.cpp's LLAMA_TOKEN_ATTR_CONTROL
# Accents, an emoji, an em dash, a mathematical letter (no Gemma piece: byte-fallback tokens) and CJK (split across
# SmolLM2 tokens), with leading-space pieces in between.
UNICODE_PROMPT = "Naïve café review 🙂 — the 𝔘ltra crème brûlée at 日本橋 was"


@pytest.fixture(scope="module")
def vocabularies(gemma_path, smollm_path) -> dict:
    from sia_edge.base_model import BaseModel

    return {"gemma": BaseModel(gemma_path, vocab_only=True), "smollm2": BaseModel(smollm_path, vocab_only=True)}


def _byte_model(base):
    from sia_edge.value_model import ValueModel

    model = ValueModel(BYTE_MODEL)
    model.bind(base.fingerprint, base.name, base.token_bytes, base.n_vocab)
    return model


class Recorder:
    """Stands in for the onnxruntime session: records every call's inputs, then runs the real session."""

    def __init__(self, session) -> None:
        self.session, self.calls = session, []

    def run(self, names, feeds):
        self.calls.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def _detokenize(base, tokens: list[int]) -> bytes:
    """llama.cpp's own detokenizer (llama_detokenize, control tokens not rendered): the reference text, computed
    apart from the per-token pieces the runtime uses."""
    import ctypes

    import llama_cpp

    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    buffer = ctypes.create_string_buffer(64 * len(tokens) + 64)
    n = llama_cpp.llama_detokenize(base._vocab, array, len(tokens), buffer, len(buffer), False, False)
    assert n >= 0
    return buffer.raw[:n]


def _row_bytes(tokens: np.ndarray, mask: np.ndarray) -> bytes:
    assert tokens.min() >= 0 and tokens.max() <= 255
    return bytes(tokens[mask > 0].astype(np.uint8).tolist())


# --- how tokens become bytes -------------------------------------------------------------------------------------


def test_gemma_byte_fallback_tokens_render_as_their_raw_byte(vocabularies):
    gemma = vocabularies["gemma"]
    fallback = {}
    for token in range(gemma.n_vocab):
        match = re.fullmatch(rb"<0x([0-9A-F]{2})>", gemma.token_text(token))
        if match:
            fallback[token] = int(match.group(1), 16)
    assert sorted(fallback.values()) == list(range(256))
    for token, value in fallback.items():
        assert gemma.token_bytes(token) == bytes([value])


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_control_tokens_render_no_bytes(vocabularies, name):
    base = vocabularies[name]
    control = [t for t in range(base.n_vocab) if base.token_attr(t) & CONTROL]
    assert base.bos_id in control and base.eos_id in control
    markers = {"gemma": "<start_of_turn>", "smollm2": "<|im_start|>"}[name]
    assert any(base.token_text(t) == markers.encode() for t in control)  # the chat-turn marker is one of them
    assert all(base.token_bytes(t) == b"" for t in control)


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_pieces_of_a_unicode_text_are_its_utf8(vocabularies, name):
    base = vocabularies[name]
    tokens = base.tokenize(UNICODE_PROMPT, add_bos=False)
    pieces = [base.token_bytes(t) for t in tokens]
    assert b"".join(pieces) == UNICODE_PROMPT.encode("utf-8")
    split = [p for p in pieces if p and not _is_whole_utf8(p)]
    assert split, "expected at least one character split across tokens"
    if name == "gemma":  # the mathematical U (4 bytes) has no piece of its own: byte-fallback tokens
        assert any(len(p) == 1 and p[0] >= 0x80 for p in pieces)


def _is_whole_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# --- a whole generation, recorded at the onnxruntime call ----------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_generation_feeds_the_value_model_exactly_the_texts_bytes(request, name):
    from sia_edge.engine import Engine

    path = request.getfixturevalue("gemma_path" if name == "gemma" else "smollm_path")
    engine = Engine(model=path, value_model=BYTE_MODEL, n_ctx=256)
    request.addfinalizer(engine.close)  # after the last token_bytes call: a closed model has no vocabulary
    recorder = engine.value_model.session = Recorder(engine.value_model.session)
    stream = engine.stream(UNICODE_PROMPT, gate="dense", max_tokens=16, seed=7)
    events = list(stream)
    result = stream.result
    base = engine.base
    folds = [c for c in recorder.calls if c["tokens"].shape[0] == 1]
    candidate_calls = [c for c in recorder.calls if c["tokens"].shape[0] == 10]
    assert len(folds) + len(candidate_calls) == len(recorder.calls)
    for call in folds:  # a fold (a long prompt) is one row without padding
        assert call["mask"].min() == 1.0
    seen = b"".join(_row_bytes(c["tokens"][0], c["mask"][0]) for c in folds)
    # One call per junction: row j is the text since the last junction's chosen token, then candidate j's bytes,
    # right-padded; the chosen row's state is the next prefix, so the rows add up to exactly the text's bytes.
    steered = [e for e in events if e.junction]
    assert len(candidate_calls) == len(steered) == result.stats.tokens  # dense: every step
    for event, call in zip(steered, candidate_calls):
        rows = [_row_bytes(t, m) for t, m in zip(call["tokens"], call["mask"])]
        pieces = [base.token_bytes(c) for c in event.candidates]
        pending = rows[0][: len(rows[0]) - len(pieces[0])]
        assert rows == [pending + piece for piece in pieces]
        for mask in call["mask"]:  # padding only after the real bytes
            assert np.all(np.diff(mask) <= 0)
        seen += pending + pieces[event.rank]
    prompt_tokens = base.tokenize(UNICODE_PROMPT)
    assert seen.startswith(UNICODE_PROMPT.encode("utf-8"))
    assert seen == _detokenize(base, prompt_tokens + result.token_ids)
    text = _detokenize(base, result.token_ids)
    if "\ufffd" not in result.text:  # (a generation may stop inside a character)
        assert text == result.text.encode("utf-8")


def test_steering_any_gguf_out_of_the_box(smollm_path, monkeypatch):
    """A GGUF with no token-level model of its own (SmolLM2 with the shipped table emptied) gets the byte model."""
    import sia_edge.models
    from sia_edge.cli import main
    from sia_edge.engine import Engine

    only_bytes = tuple(m for m in sia_edge.models.SHIPPED if m.input == "bytes")
    monkeypatch.setattr(sia_edge.models, "SHIPPED", only_bytes)
    monkeypatch.delenv("SIA_EDGE_VALUE_MODEL", raising=False)
    engine = Engine(model=smollm_path, n_ctx=256)
    try:
        assert engine.value_model.path == BYTE_MODEL and engine.value_model.reads_bytes
        assert "byte-level" in engine.value_model_reason
        result = engine.generate("The hotel was", gate="dense", max_tokens=6, seed=1)
        assert result.stats.junctions == result.stats.tokens > 0 and result.stats.value_model_calls > 0
    finally:
        engine.close()
    info = CliRunner().invoke(main, ["info", "--model", str(smollm_path), "--json", "--ctx", "256"])
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["value_model"] == str(BYTE_MODEL) and facts["value_model_input"] == "bytes"
    assert "byte-level" in facts["value_model_reason"]


# --- the state -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_folding_pieces_equals_one_pass_over_the_bytes(vocabularies, name):
    base = vocabularies[name]
    model = _byte_model(base)
    tokens = base.tokenize(UNICODE_PROMPT + " great, not bad at all!", add_bos=False)
    prefix = model.empty_prefix()
    for token in tokens:  # one junction per token: the worst case for carried state
        prefix = model.extend(prefix, [token])
    assert prefix.n_tokens == len(tokens)
    data = np.frombuffer((UNICODE_PROMPT + " great, not bad at all!").encode("utf-8"), np.uint8).astype(np.int64)
    one_pass, score = model.session.run(None, {"state": np.zeros((1, model.state_size), np.float32),
                                               "tokens": data[None], "mask": np.ones((1, len(data)), np.float32)})
    np.testing.assert_allclose(prefix.vector, one_pass[0], atol=1e-5)
    reference_state, reference_score = _float64_reference(data)
    np.testing.assert_allclose(one_pass[0], reference_state, atol=1e-4)
    assert score[0] == pytest.approx(reference_score, abs=1e-4)


def _float64_reference(data: np.ndarray) -> tuple[np.ndarray, float]:
    """The GRU and head in float64 from the file's weights, following the ONNX GRU formulas (z, r, h gate order,
    linear_before_reset = 1): a hand reference for the exported graph."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(BYTE_MODEL)).graph.initializer}
    w, r, b = weights["W"][0], weights["R"][0], weights["B"][0]
    hidden = r.shape[1]
    wb, rb = b[: 3 * hidden], b[3 * hidden :]
    h = np.zeros(hidden)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for value in data:
        gx = w @ weights["embedding"][value] + wb
        gh = r @ h + rb
        z = sigmoid(gx[:hidden] + gh[:hidden])
        reset = sigmoid(gx[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
        candidate = np.tanh(gx[2 * hidden :] + reset * gh[2 * hidden :])
        h = (1 - z) * candidate + z * h
    head = np.tanh(weights["head1_w"] @ h + weights["head1_b"])
    return h, float((weights["head2_w"] @ head + weights["head2_b"])[0])


@pytest.mark.parametrize("name", ["gemma", "smollm2"])
def test_special_tokens_contribute_nothing(vocabularies, name):
    base = vocabularies[name]
    model = _byte_model(base)
    text = base.tokenize(" The crew was lovely", add_bos=False)
    marker = base.tokenize({"gemma": "<start_of_turn>", "smollm2": "<|im_start|>"}[name], add_bos=False,
                           special=True)
    assert len(marker) == 1 and base.token_bytes(marker[0]) == b""
    plain = model.extend(model.empty_prefix(), text)
    with_specials = model.extend(model.empty_prefix(), [base.bos_id] + marker + text[:2] + [base.eos_id] + text[2:])
    np.testing.assert_array_equal(with_specials.vector, plain.vector)
    calls = model.calls
    assert model.extend(plain, [base.eos_id]).vector is plain.vector and model.calls == calls  # no call at all
    # An EOS candidate scores as the prefix itself; the others as prefix + their piece.
    candidates = np.array([base.eos_id] + base.tokenize(" great terrible", add_bos=False))
    scores = model.score_candidates(plain, candidates)
    expected = model.score_sequences([text] + [text + [int(c)] for c in candidates[1:]])
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_unbound_byte_model_and_foreign_ids_are_refused(vocabularies):
    from sia_edge.value_model import ValueModel

    with pytest.raises(ValueModelError, match="not bound"):
        ValueModel(BYTE_MODEL).extend(ValueModel(BYTE_MODEL).empty_prefix(), [5])
    model = _byte_model(vocabularies["smollm2"])
    with pytest.raises(ValueModelError, match="outside the base model's vocabulary of 49152"):
        model.score_candidates(model.empty_prefix(), np.array([60_000]))


# --- the contract ----------------------------------------------------------------------------------------------


def _tiny_model(path: Path, metadata: dict, rows: int = 256, names=("state", "tokens", "mask"),
                tokens_type=None, carries_state: bool = True, clip: bool = False) -> Path:
    """A bag-of-embeddings graph written by hand: new_state = state + sum(mask * E[tokens]); score = sum(state)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    size = 4
    table = np.random.default_rng(0).normal(size=(rows, size)).astype(np.float32)
    state, tokens, mask = names
    nodes = [helper.make_node("Gather", ["table", tokens], ["embedded"]),
             helper.make_node("Unsqueeze", [mask, "axis2"], ["mask3"]),
             helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axis1"], ["added"], keepdims=0),
             helper.make_node("Add" if carries_state else "Identity",
                              [state, "added"] if carries_state else ["added"], ["new_state"]),
             helper.make_node("ReduceSum", ["new_state", "axis1"], ["score"], keepdims=0)]
    if clip:
        nodes.insert(0, helper.make_node("Clip", [tokens, "low", "high"], ["clipped"]))
        nodes[1] = helper.make_node("Gather", ["table", "clipped"], ["embedded"])
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(state, TensorProto.FLOAT, ["batch", size]),
         helper.make_tensor_value_info(tokens, tokens_type or TensorProto.INT64, ["batch", "n"]),
         helper.make_tensor_value_info(mask, TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("new_state", TensorProto.FLOAT, ["batch", size]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([2], np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(np.array(0, np.int64), "low"),
         numpy_helper.from_array(np.array(rows - 1, np.int64), "high")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"sia_edge.{key}", value
    onnx.save(model, str(path))
    return path


BYTES_META = {"contract": "2", "input": "bytes"}


def test_a_valid_hand_written_byte_model_loads(tmp_path, vocabularies):
    from sia_edge.value_model import ValueModel

    model = ValueModel(_tiny_model(tmp_path / "ok.onnx", BYTES_META))
    model.bind("", "any", vocabularies["gemma"].token_bytes)
    tokens = vocabularies["gemma"].tokenize(" café", add_bos=False)
    table = np.random.default_rng(0).normal(size=(256, 4))
    expected = table[list(" café".encode("utf-8"))].sum()  # float64 hand reference
    assert model.score_sequences([tokens])[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("case", "build", "message"), [
    ("input names", dict(metadata=BYTES_META, names=("state", "ids", "mask")), "does not follow the sia-edge"),
    ("tokens dtype", dict(metadata=BYTES_META, tokens_type=7 - 1), "does not follow the sia-edge"),  # INT32
    ("table too small", dict(metadata=BYTES_META, rows=200), "graph fails on byte values 0-255"),
    ("state not carried", dict(metadata=BYTES_META, carries_state=False), "does not carry their state"),
    ("fingerprint on bytes", dict(metadata={**BYTES_META, "tokenizer_fingerprint": "ab" * 32}),
     "must not carry one"),
    ("unknown input", dict(metadata={"contract": "2", "input": "chars"}), "'chars'"),
    ("bytes in contract 1", dict(metadata={"contract": "1", "input": "bytes"}), "contract 1 allows tokens"),
    ("tokens without fingerprint", dict(metadata={"contract": "2", "input": "tokens"}), "is missing"),
    ("unknown contract", dict(metadata={"contract": "3", "input": "bytes"}), "expected one of '1', '2'"),
])
def test_contract_violations_are_refused_in_one_line(tmp_path, case, build, message):
    from sia_edge.value_model import ValueModel

    path = _tiny_model(tmp_path / "bad.onnx", **build)
    with pytest.raises(ValueModelError) as refused:
        ValueModel(path)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_token_model_whose_graph_cannot_read_the_vocabulary_is_refused(tmp_path, vocabularies):
    from sia_edge.value_model import ValueModel

    gemma = vocabularies["gemma"]
    meta = {"contract": "2", "input": "tokens", "tokenizer_fingerprint": gemma.fingerprint}
    model = ValueModel(_tiny_model(tmp_path / "t.onnx", meta))  # a 256-row table labelled as Gemma token ids
    with pytest.raises(ValueModelError, match="fails on id 262143 of this vocabulary") as refused:
        model.bind(gemma.fingerprint, gemma.name, gemma.token_bytes, gemma.n_vocab)
    assert "\n" not in str(refused.value)
    ValueModel(_tiny_model(tmp_path / "c.onnx", meta, clip=True)).bind(gemma.fingerprint, gemma.name,
                                                                      gemma.token_bytes, gemma.n_vocab)


def test_cli_refuses_a_broken_value_model_in_one_line(tmp_path, gemma_path):
    from sia_edge.cli import main

    path = _tiny_model(tmp_path / "bad.onnx", BYTES_META, rows=200)
    result = CliRunner().invoke(main, ["info", "--model", str(gemma_path), "--value-model", str(path), "--ctx", "64"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "fails on byte values" in lines[0]


def test_token_model_for_another_tokenizer_points_at_the_byte_model(vocabularies):
    from sia_edge.value_model import ValueModel

    gemma = vocabularies["gemma"]
    smollm_model = ValueModel(SHIPPED / "smollm2-135m-sentiment.onnx")
    with pytest.raises(TokenizerMismatchError) as refused:
        smollm_model.bind(gemma.fingerprint, gemma.name, gemma.token_bytes, gemma.n_vocab)
    assert str(BYTE_MODEL) in str(refused.value) and "omit --value-model" in str(refused.value)


def test_state_size_is_read_by_name_whatever_the_input_order(tmp_path, vocabularies):
    onnx = pytest.importorskip("onnx")
    from sia_edge.value_model import ValueModel

    model = onnx.load(str(BYTE_MODEL))
    inputs = list(model.graph.input)
    assert [i.name for i in inputs] == ["state", "tokens", "mask"]
    del model.graph.input[:]
    model.graph.input.extend([inputs[2], inputs[1], inputs[0]])  # mask, tokens, state: still a valid model
    reordered = tmp_path / "reordered.onnx"
    onnx.save(model, str(reordered))
    original, moved = ValueModel(BYTE_MODEL), ValueModel(reordered)
    assert moved.session.get_inputs()[0].name == "mask"
    assert moved.state_size == original.state_size == 128
    base = vocabularies["smollm2"]
    for loaded in (original, moved):
        loaded.bind(base.fingerprint, base.name, base.token_bytes, base.n_vocab)
    texts = [base.tokenize(t, add_bos=False) for t in ("lovely crew", "rude staff, lost bag")]
    np.testing.assert_array_equal(original.score_sequences(texts), moved.score_sequences(texts))


# --- which value model a base model gets -----------------------------------------------------------------------


def test_resolution_order(monkeypatch, tmp_path):
    from sia_edge.models import SHIPPED_VALUE_MODELS, choose_value_model, shipped_byte_value_model

    monkeypatch.delenv("SIA_EDGE_VALUE_MODEL", raising=False)
    gemma_fingerprint = next(f for f, n in SHIPPED_VALUE_MODELS.items() if n.startswith("gemma"))
    token = choose_value_model(None, gemma_fingerprint)  # weights unknown: the tokenizer's model
    assert token.path == SHIPPED / "gemma3-270m-sentiment.onnx" and "token-level" in token.reason
    from sia_edge.models import GEMMA_WEIGHTS

    hidden = choose_value_model(None, gemma_fingerprint, GEMMA_WEIGHTS)  # these exact weights: the hidden-state one
    assert hidden.path == SHIPPED / "gemma3-270m-hidden-sentiment.onnx" and "exact weights" in hidden.reason
    other_weights = choose_value_model(None, gemma_fingerprint, "e" * 64)  # a fine-tune with Gemma's tokenizer
    assert other_weights.path == token.path and "no hidden-state one ships for weights eeeeeeeeeeeeeeee" in \
        other_weights.reason
    other = choose_value_model(None, "0" * 64)
    assert other.path == shipped_byte_value_model() == BYTE_MODEL and "byte-level" in other.reason
    assert "0000000000000000" in other.reason
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"x")
    assert choose_value_model(str(mine), gemma_fingerprint).path == mine
    monkeypatch.setenv("SIA_EDGE_VALUE_MODEL", str(BYTE_MODEL))
    from_env = choose_value_model(None, gemma_fingerprint)
    assert from_env.path == BYTE_MODEL and "SIA_EDGE_VALUE_MODEL" in from_env.reason
    assert choose_value_model(str(mine), gemma_fingerprint).reason == "given with --value-model"
    with pytest.raises(ValueModelError, match="not found"):
        choose_value_model(str(tmp_path / "missing.onnx"), gemma_fingerprint)


def test_shipped_byte_model_card_facts():
    from sia_edge.value_model import ValueModel

    model = ValueModel(BYTE_MODEL)
    assert BYTE_MODEL.stat().st_size <= 10_000_000
    assert model.reads_bytes and model.metadata["architecture"] == "gru"
    assert model.metadata["objective"] == "positive sentiment"


def test_word_order_probe_set_is_well_formed():
    lines = [line for line in (REPO / "tools" / "probes" / "word-order.tsv").read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    assert lines[0].split("\t") == ["category", "positive", "negative"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) >= 60 and all(len(row) == 3 and row[1] != row[2] for row in rows)
    assert {row[0] for row in rows} == {"negation", "contrast", "intensifier", "sarcasm"}
    assert len({(row[1], row[2]) for row in rows}) == len(rows)  # no pair twice
    contrast = [row for row in rows if row[0] == "contrast"]  # same words, other order
    assert all(sorted(row[1].split()) == sorted(row[2].split()) for row in contrast)
