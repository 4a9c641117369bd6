"""The CLI through real subprocesses: output formats, bad input (one line, exit 2), Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from sia_edge.models import shipped_value_model_dir

GEMMA_VALUE_MODEL = shipped_value_model_dir() / "gemma3-270m-sentiment.onnx"


def run_cli(*args, stdin=None, timeout=300, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sia_edge", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def test_generate_json_carries_text_and_stats(gemma_path):
    proc = run_cli("generate", "The movie was", "--json", "-n", "16", "--seed", "3", "--model", str(gemma_path),
                   "--tau", "1.8")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    stats = payload["stats"]
    assert payload["text"] and payload["stop_reason"] in ("length", "eos")
    assert stats["seed"] == 3 and 1 <= stats["tokens"] <= 16
    assert 0.0 < stats["junction_ratio"] < 1.0
    assert stats["value_model_calls"] == stats["junctions"]
    assert payload["value_model"].endswith("gemma3-270m-hidden-sentiment.onnx")  # the default for these weights
    ran = payload["settings"]  # what ran, as the pipeline line says it: not None for a default
    assert (ran["tau"], ran["weight"], ran["value_model"]) == (1.8, 4.0, "gemma3-270m-hidden-sentiment.onnx")
    assert "seed 3" in proc.stderr  # the summary line on stderr always reports the seed


def test_generate_with_a_ratio_takes_tau_from_the_shipped_calibration(gemma_path):
    from sia_edge.calibration import tau_from_calibration

    proc = run_cli("generate", "The movie was", "--json", "-n", "12", "--seed", "3", "--model", str(gemma_path),
                   "--ratio", "0.2")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    calibration = json.loads(next(shipped_value_model_dir().glob("calibration-*-top-k.json")).read_text())
    tau = tau_from_calibration(calibration, 0.2)
    assert payload["settings"]["ratio"] == 0.2
    assert payload["settings"]["calibrated_tau"] == pytest.approx(tau) == payload["settings"]["tau"]
    assert f"entropy-gate(tau={tau:g})" in payload["pipeline"]


def test_gpu_layers_are_accepted_and_reported_inactive_on_a_cpu_build(gemma_path):
    from sia_edge.base_model import gpu_offload_supported

    proc = run_cli("info", "--json", "--gpu-layers", "all", "--model", str(gemma_path))
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["gpu_offload_supported"] == gpu_offload_supported()
    if not facts["gpu_offload_supported"]:
        assert facts["gpu_layers"] == 0
    proc = run_cli("generate", "Hi", "-n", "2", "--gate", "none", "--gpu-layers", "4", "--model", str(gemma_path))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("generate", "Hi", "--gpu-layers", "some", "--model", str(gemma_path))
    assert proc.returncode == 2 and "layer count" in proc.stderr


def test_console_script_is_installed_and_prints_help():
    script = shutil.which("sia-edge")
    if script is None:
        pytest.skip("sia-edge is not installed in this environment (run `pip install .`)")
    proc = subprocess.run([script, "generate", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--model", "--value-model", "--gate", "--tau", "--top-k", "--weight", "--temperature", "--seed",
                   "--max-tokens", "--stop", "--stream", "--json", "--jsonl"):
        assert option in proc.stdout


def test_jsonl_streams_one_event_per_token_then_the_result(gemma_path):
    proc = run_cli("generate", "-", "--jsonl", "-n", "8", "--seed", "1", "--model", str(gemma_path),
                   stdin="Dear diary, today")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    tokens = [line for line in lines if line["type"] == "token"]
    assert lines[-1]["type"] == "result"
    assert "".join(t["text"] for t in tokens) == lines[-1]["text"]
    assert len(tokens) == len(lines[-1]["token_ids"])


def test_plain_text_output_is_only_the_continuation(gemma_path):
    proc = run_cli("generate", "The weather today", "-n", "8", "--seed", "2", "--gate", "none", "--model",
                   str(gemma_path), "--no-stream")
    assert proc.returncode == 0, proc.stderr
    as_json = run_cli("generate", "The weather today", "-n", "8", "--seed", "2", "--gate", "none", "--model",
                      str(gemma_path), "--json")
    assert proc.stdout == json.loads(as_json.stdout)["text"] + "\n"


def write_onnx_with_wrong_signature(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "wrong",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, gemma_path):
    folder = tmp_path_factory.mktemp("bad")
    not_gguf = folder / "notes.gguf"
    not_gguf.write_text("this is not a model\n")
    truncated = folder / "truncated.gguf"
    with open(gemma_path, "rb") as src:
        truncated.write_bytes(src.read(2_000_000))
    garbage_onnx = folder / "garbage.onnx"
    garbage_onnx.write_bytes(b"\x08\x01garbage" * 100)
    wrong_onnx = folder / "wrong.onnx"
    write_onnx_with_wrong_signature(wrong_onnx)
    return {"not_gguf": not_gguf, "truncated": truncated, "garbage_onnx": garbage_onnx, "wrong_onnx": wrong_onnx,
            "missing": folder / "missing.gguf"}


BAD_INPUTS = [
    ("missing model", lambda f, g, s: ["x", "--model", str(f["missing"])], "model file not found"),
    ("not a gguf", lambda f, g, s: ["x", "--model", str(f["not_gguf"])], "is not a GGUF file"),
    ("truncated gguf", lambda f, g, s: ["x", "--model", str(f["truncated"])], "could not load"),
    ("missing value model", lambda f, g, s: ["x", "--model", g, "--value-model", str(f["missing"])],
     "value model not found"),
    ("garbage onnx", lambda f, g, s: ["x", "--model", g, "--value-model", str(f["garbage_onnx"])],
     "cannot load value model"),
    ("wrong signature", lambda f, g, s: ["x", "--model", g, "--value-model", str(f["wrong_onnx"])],
     "does not follow the sia-edge value-model contract"),
    ("tokenizer mismatch", lambda f, g, s: ["x", "--model", s, "--value-model", str(GEMMA_VALUE_MODEL)],
     "was built for tokenizer df22d6d745732044 but base model SmolLM2-135M-Instruct.Q4_1.gguf has tokenizer"),
    ("empty prompt", lambda f, g, s: ["", "--model", g], "the prompt is empty"),
    ("prompt too long", lambda f, g, s: ["word " * 400, "--model", g, "--ctx", "256"], "context holds 256"),
    ("negative tau", lambda f, g, s: ["x", "--model", g, "--tau", "-1"], "tau must be"),
    ("k < 1", lambda f, g, s: ["x", "--model", g, "--top-k", "0"], "top_k must be >= 1, got 0"),
    ("k > vocab", lambda f, g, s: ["x", "--model", g, "--top-k", "300000"], "top_k must be <= the vocabulary"),
    ("T < 0", lambda f, g, s: ["x", "--model", g, "--temperature", "-0.5"], "temperature must be >= 0"),
    ("q > 1", lambda f, g, s: ["x", "--model", g, "--gate", "random", "--q", "1.5"], "q must be in [0, 1]"),
    ("online without ratio", lambda f, g, s: ["x", "--model", g, "--gate", "online"], "needs a target ratio"),
    ("tau and ratio", lambda f, g, s: ["x", "--model", g, "--tau", "1", "--ratio", "0.2"], "give tau or ratio, not both"),
]


@pytest.mark.parametrize("name, make_args, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(bad_files, gemma_path, smollm_path, name, make_args, message):
    proc = run_cli("generate", *make_args(bad_files, str(gemma_path), str(smollm_path)))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sia-edge: error: ")
    assert message in lines[0]


@pytest.mark.parametrize("how", ["argument", "stdin"])
def test_text_that_is_not_utf8_is_one_line_and_exit_2(gemma_path, how):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    prompt, stdin = (b"caf\xe9 au lait", None) if how == "argument" else (b"-", b"caf\xe9 au lait")
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "generate", prompt, "-n", "2", "--gate", "none",
                           "--model", str(gemma_path)], input=stdin, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0] and lines[0].startswith("sia-edge: error: ")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc): progress that a busy machine cannot fake."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to see the process working")
def test_ctrl_c_during_best_of_prints_the_best_partial_sample(gemma_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    proc = subprocess.Popen([sys.executable, "-m", "sia_edge", "generate", "Once upon a time", "--json", "-n", "1500",
                             "--best-of", "2", "--seed", "5", "--gate", "none", "--model", str(gemma_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while proc.poll() is None and cpu_seconds(proc.pid) < 6.0:  # loaded and generating (2 x 1500 tokens is ~1 min)
        threading.Event().wait(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    payload = json.loads(out)
    assert [s["stop_reason"] for s in payload["samples"]] == ["cancelled", "cancelled"]
    assert all(0 < s["tokens"] < 1500 for s in payload["samples"])
    assert payload["best"] == max(range(2), key=payload["scores"].__getitem__)
    assert "Traceback" not in err


def test_ctrl_c_ends_cleanly_with_what_was_generated(gemma_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIA_EDGE_")}
    proc = subprocess.Popen([sys.executable, "-m", "sia_edge", "generate", "Once upon a time", "--jsonl", "-n", "400",
                             "--seed", "5", "--gate", "none", "--model", str(gemma_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = [proc.stdout.readline() for _ in range(3)]  # generation is under way
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    lines = [json.loads(line) for line in first + rest.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines[-1]["type"] == "result" and lines[-1]["stop_reason"] == "cancelled"
    tokens = [line for line in lines if line["type"] == "token"]
    assert 3 <= len(tokens) < 400
    assert lines[-1]["text"] == "".join(t["text"] for t in tokens)
    assert "Traceback" not in err
