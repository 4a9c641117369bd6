"""The benchmark runs end to end (timings are reported, never asserted) and the value model's carried state is exact."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sia_edge.models import shipped_value_model_dir


def test_bench_runs_end_to_end_and_emits_json(gemma_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    plot = tmp_path / "cost.png"
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "bench", "--model", str(gemma_path), "-n", "8",
                           "--repetitions", "1", "--no-rss", "--json", "--plot", str(plot),
                           "--batch-sizes", "1,3", "--batch-requests", "3"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    arms = {row["arm"]: row for row in report["arms"]}
    assert set(arms) == {"raw decode", "llama-cpp-python", "sia none", "sia entropy r=0.2", "sia entropy r=0.5",
                         "sia dense"}
    for row in arms.values():
        assert row["min"] <= row["tokens_per_second"] <= row["max"] and row["min"] > 0
        assert row["tokens"] > 0
    assert arms["sia none"]["junction_ratio"] == 0.0 and arms["sia dense"]["junction_ratio"] == 1.0
    assert 0.0 < arms["sia entropy r=0.2"]["junction_ratio"] < arms["sia entropy r=0.5"]["junction_ratio"] < 1.0
    assert arms["sia none"]["value_model_ms_per_token"] == 0.0
    assert arms["sia dense"]["value_model_ms_per_token"] > 0.0
    assert set(report["gate_ms"]) >= {"top-k + entropy (sia-edge)", "argpartition top-k (naive)"}
    assert [r["prefix_tokens"] for r in report["value_model_ms"]] == [32, 128, 512, 1024]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    batched = {row["mode"]: row for row in report["batched"]}
    assert set(batched) == {"sequential", "batch 1", "batch 3"}
    for row in batched.values():
        assert row["requests"] == 3 and 0 < row["tokens"] <= 3 * 8 and row["tokens_per_second"] > 0


@pytest.fixture(scope="module")
def value_model():
    from sia_edge.value_model import ValueModel

    return ValueModel(shipped_value_model_dir() / "gemma3-270m-sentiment.onnx")


@pytest.mark.parametrize("length", [1, 32, 300, 1024])
def test_carried_state_scores_equal_scoring_from_scratch(value_model, length):
    rng = np.random.default_rng(length)
    tokens = rng.integers(3, 50_000, size=length).tolist()
    candidates = rng.integers(3, 50_000, size=10)
    state = value_model.empty_prefix()
    cuts = sorted(set(rng.integers(0, length, size=5).tolist()) | {0, length})
    for start, end in zip(cuts, cuts[1:]):  # fold the prefix in a few uneven chunks, as junctions would
        state = value_model.extend(state, tokens[start:end])
    assert state.n_tokens == length
    incremental = value_model.score_candidates(state, candidates)
    from_scratch = value_model.score_sequences([tokens + [int(c)] for c in candidates])
    np.testing.assert_allclose(incremental, from_scratch, atol=1e-5, rtol=1e-5)


def test_positive_text_scores_above_negative(value_model):
    from sia_edge.base_model import BaseModel
    from sia_edge.models import default_base_model

    tokenizer = BaseModel(default_base_model(), vocab_only=True)
    good, bad = (tokenizer.tokenize(t, add_bos=False) for t in
                 ("What a wonderful day, I loved every minute of it!", "This was awful, I hated every minute of it."))
    scores = value_model.score_sequences([good, bad])
    assert scores[0] > scores[1]


def test_batch_sizes_option_parses_and_refuses_nonsense():
    import click

    from sia_edge.commands.bench import parse_batch_sizes

    assert parse_batch_sizes("1,4, 8") == [1, 4, 8] and parse_batch_sizes("") == []
    for bad in ("0,4", "two", "4,-1"):
        with pytest.raises(click.BadParameter):
            parse_batch_sizes(bad)


def test_bench_times_a_look_ahead_junction_mirrored_and_after_new_tokens(gemma_path):
    """A look-ahead model's junction is timed twice per prefix length: with the text already mirrored (the k
    candidates alone) and after the text grew by a few tokens (those share the candidates' decode)."""
    from sia_edge.commands.bench import format_table, value_model_costs
    from sia_edge.engine import Engine

    engine = Engine(model=gemma_path, value_model=shipped_value_model_dir() / "gemma3-270m-lookahead-l8-sentiment.onnx")
    try:
        before = engine.base.look_ahead(10, engine.value_model.layer).decoded_tokens
        rows = value_model_costs(engine, lengths=(32,), new_tokens=5)
        reader = engine.base.look_ahead(10, engine.value_model.layer)
    finally:
        engine.close()
    assert [r["prefix_tokens"] for r in rows] == [32] and rows[0]["new_tokens"] == 5
    assert rows[0]["carried_state_ms"] > 0 and rows[0]["after_new_tokens_ms"] > 0
    # a first junction reads the 32 tokens and 10 candidates; 30 timed with the text mirrored (the candidates alone);
    # 20 times back to the prefix (10 candidates) and then the timed one (5 new tokens and 10 candidates)
    assert reader.decoded_tokens - before == (32 + 10) + 30 * 10 + 20 * (10 + 5 + 10)
    table = format_table({"model": "gemma", "value_model": "l8", "max_tokens": 8, "repetitions": 1, "threads": 2,
                          "arms": [], "gate_ms": {}, "value_model_ms": rows})
    assert "| 32 |" in table and "after 5 new tokens, ms" in table
