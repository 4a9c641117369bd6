"""`sia-edge bench serve` end to end on the real default model: a tiny run, the report's structure and its token
counts (timings are reported, never asserted)."""

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_bench_serve_reports_every_client_count_for_both_servers(gemma_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "bench", "serve", "--model", str(gemma_path),
                           "--threads", "1", "--clients", "1,2", "--requests", "2", "-n", "8", "--scenario", "single",
                           "--json"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["parallel"] == [1, 4] and report["clients"] == [1, 2]
    rows = {(row["parallel"], row["clients"]): row for row in report["rows"]}
    assert set(rows) == {(1, 1), (1, 2), (4, 1), (4, 2)}
    for (parallel, clients), row in rows.items():
        assert row["requests"] == clients * 2 and row["errors"] == 0
        records = row["records"]
        assert len(records) == row["requests"] and row["tokens"] == sum(r["tokens"] for r in records)
        assert {r["kind"] for r in records} >= {"completion", "completion stream"}
        for record in records:
            assert 1 <= record["tokens"] <= 8
            if record["stream"]:  # one chunk per token that completes a piece of text
                assert 1 <= record["chunks"] <= record["tokens"] and len(record["gaps"]) == record["chunks"] - 1
        assert row["ttft_ms_p50"] is not None and row["itl_ms_p95"] is not None
        assert row["tokens_per_second"] > 0
        if parallel == 1:  # one at a time: no batched steps
            assert row["vm_calls_per_step"] is None
        else:  # at ratio 0.2 most steps have no junction; merged, a step never needs more than one call per model
            assert 0 < row["vm_calls_per_step"] <= 1
        assert row["vs_parallel_1"] == pytest.approx(row["tokens_per_second"] / rows[1, clients]["tokens_per_second"])
    assert "tok/s" not in proc.stdout  # JSON only on stdout; the progress went to stderr
    assert "parallel 1, 2 clients" in proc.stderr


def test_bench_serve_conversations_report_cached_prompt_tokens(gemma_path):
    """Growing conversations: on the batching server (prefix reuse on) every turn after the first finds the
    conversation so far cached, so it decodes fewer prompt tokens than the prompt holds; --parallel 1 reads each
    prompt whole."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "bench", "serve", "--model", str(gemma_path),
                           "--threads", "1", "--scenario", "conversation", "--conversations", "2", "--turns", "3",
                           "-n", "8", "--json"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {row["parallel"]: row for row in report["rows"]}
    assert set(rows) == {1, 4} and all(r["scenario"] == "conversation" for r in rows.values())
    for parallel, row in rows.items():
        assert row["errors"] == 0 and row["requests"] == 6 and [t["turn"] for t in row["turns"]] == [1, 2, 3]
        for record in row["records"]:
            assert record["decoded_tokens"] == record["prompt_tokens"] - record["cached_tokens"]
            if parallel == 1 or record["turn"] == 1:
                assert record["cached_tokens"] == 0
            else:  # the earlier turns were reused: only about what the conversation grew by was decoded
                assert record["cached_tokens"] > 0 and record["decoded_tokens"] <= record["new_tokens"] + 8
        growth = [t["prompt_tokens_p50"] for t in row["turns"]]
        assert growth == sorted(growth) and growth[0] < growth[-1]


def test_clients_option_refuses_nonsense():
    import click

    from sia_edge.commands.bench_serve import parse_clients

    assert parse_clients("1, 2,8") == [1, 2, 8]
    for bad in ("", "0,2", "two"):
        with pytest.raises(click.BadParameter):
            parse_clients(bad)
