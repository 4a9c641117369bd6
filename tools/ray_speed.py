"""In-process batched evaluation against the same work on Ray actors, timed in one script run (docs/ray.md).

    python tools/ray_speed.py [--prompts tools/prompts/dev.txt] [--limit 16] [-n 32] [--out runs/ray-speed]

Runs `sia-edge eval --arms none --seeds 1` three times on the same prompts:
    A  in-process, --batch-size 16 (all cores)
    B  --ray --ray-actors 2 --threads 1 --batch-size 8 (each actor decodes one batch of 8; Ray started locally)
    C  in-process, --batch-size 8 (B's batch composition, so its samples must equal B's)
and prints each wall time (the whole command: model loading, Ray start-up, generation, judging) and the generation
loop's own time (results.json seconds_this_session), the ratios, and whether B and C wrote identical samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TIMING = ("ms_per_token",)


def run(name: str, extra: list[str], args, out: Path) -> dict:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "sia_edge", "eval", "--prompts", args.prompts, "--limit", str(args.limit),
               "--seeds", "1", "--arms", "none", "-n", str(args.max_tokens), "--out", str(folder), *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results = json.loads((folder / "results.json").read_text())
    samples = {(s["prompt_index"], s["seed"]): {k: v for k, v in s.items() if k not in TIMING}
               for s in map(json.loads, (folder / "samples.jsonl").read_text().splitlines())}
    return {"name": name, "command": " ".join(command[1:]), "wall_s": wall,
            "generation_s": results["seconds_this_session"], "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="tools/prompts/dev.txt")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("-n", "--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="runs/ray-speed")
    args = parser.parse_args()
    out = Path(args.out)
    runs = [run("A-in-process-b16", ["--batch-size", "16"], args, out),
            run("B-ray-2x1-b8", ["--batch-size", "8", "--ray", "--ray-actors", "2", "--threads", "1"], args, out),
            run("C-in-process-b8", ["--batch-size", "8"], args, out)]
    tokens = args.limit * args.max_tokens
    print(f"{args.limit} prompts x 1 seed x arm none x {args.max_tokens} tokens ({tokens} tokens); "
          f"load average {os.getloadavg()[0]:.1f} at the end (shared machine: noisy)")
    for r in runs:
        print(f"{r['name']:18} wall {r['wall_s']:6.1f} s  generation {r['generation_s']:6.1f} s  "
              f"({tokens / r['generation_s']:.1f} tok/s)   {r['command']}")
    a, b, c = runs
    print(f"Ray / in-process b16: wall {b['wall_s'] / a['wall_s']:.2f}x, generation "
          f"{b['generation_s'] / a['generation_s']:.2f}x (below 1 = Ray faster)")
    print(f"Ray / in-process b8:  wall {b['wall_s'] / c['wall_s']:.2f}x, generation "
          f"{b['generation_s'] / c['generation_s']:.2f}x")
    print(f"B and C (same batches) wrote identical samples: {b['samples'] == c['samples']}")


if __name__ == "__main__":
    main()
