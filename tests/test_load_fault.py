"""The load and fault run, short: tools/load_fault.py against a live server subprocess on the real default model,
24 requests from 4 clients with malformed bodies, oversize prompts, unknown models, non-UTF-8 text, lone surrogates
and clients that hang up mid-stream; the script itself checks statuses, whole responses, /health and RSS."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_short_load_and_fault_run(gemma_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "load_fault.py"), "--model", str(gemma_path),
                           "--requests", "24", "--clients", "4", "-n", "6", "--rss-from", "8", "--json"],
                          capture_output=True, text=True, timeout=900, env=env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], report["problems"] or proc.stderr
    assert report["server_errors"] == 0 and report["completed"] >= 10
    assert set(report["by_kind"]) == {"completion", "completion-stream", "chat", "chat-stream", "malformed",
                                      "oversize", "unknown-model", "not-utf8", "lone-surrogate", "hang-up"}
    # /health against what the clients saw: every generation they started ended exactly once (served if it
    # completed, or if it ended before the server saw its client hang up; cancelled otherwise), hang-ups cancel
    # generations (at least one of them: disconnects reach the decoder), and no accepted request failed
    delta = {key: report["health_after"][key] - report["health_before"][key] for key in ("served", "cancelled",
                                                                                      "errors")}
    assert report["hung_up"] >= 1, "the plan's hang-ups did not hang up mid-stream"
    assert delta["served"] + delta["cancelled"] == report["completed"] + report["hung_up"], delta
    assert 1 <= delta["cancelled"] <= report["hung_up"] and delta["errors"] == 0, delta
    assert report["rss"] is not None  # the server's RSS was read


def test_the_plan_mixes_every_kind_and_is_seeded():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import load_fault
    finally:
        sys.path.remove(str(REPO / "tools"))
    kinds = load_fault.plan(200, seed=1)
    assert kinds == load_fault.plan(200, seed=1) and kinds != load_fault.plan(200, seed=2)
    assert set(load_fault.plan(len(load_fault.KINDS), seed=3)) == set(load_fault.KINDS)
    share_bad = sum(load_fault.KINDS[k][1] != 200 for k in kinds) / len(kinds)
    assert 0.3 < share_bad < 0.6
