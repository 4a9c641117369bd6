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
                           "--threads", "1", "--clients", "1,2", "--requests", "2", "-n", "8", "--json"],
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


def test_clients_option_refuses_nonsense():
    import click

    from sia_edge.commands.bench_serve import parse_clients

    assert parse_clients("1, 2,8") == [1, 2, 8]
    for bad in ("", "0,2", "two"):
        with pytest.raises(click.BadParameter):
            parse_clients(bad)
