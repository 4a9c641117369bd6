"""Load and fault run against `sia-edge serve`: many concurrent clients, a share of them misbehaving.

    python tools/load_fault.py                         # starts a server on the default model, 200 requests, 8 clients
    python tools/load_fault.py --requests 400 --clients 8 --server-arg=--parallel --server-arg=4
    python tools/load_fault.py --url http://127.0.0.1:8000 --pid 1234   # an already running server

The requests (a seeded shuffle) are valid completions and chats, streamed and not, SIA at ratio 0.2, mixed with
malformed bodies (not JSON, not an object, wrong types, missing fields), prompts over the context window, unknown
models, bodies that are not UTF-8, JSON strings with lone surrogates, and streams the client hangs up on after a few
chunks. Checked:
- no 5xx, and every request gets the status its kind should (400 / 404 / 200);
- every completed response is whole: usage adds up, usage.completion_tokens equals sia.tokens and is within
  max_tokens, a stream ends with a finish_reason chunk carrying usage and then [DONE], and sends no more text chunks
  than usage.completion_tokens (one chunk per token that completes a piece of text);
- the /health counters add up: whatever of generations, cancelled, served, errors, busy, queued, active this server
  reports (at least: generations grew by the completed requests plus the cancelled ones, and no more than by the
  completed plus the hung-up ones; cancelled grew by at most the hang-ups; nothing is left busy, queued or active);
- the server's RSS (VmRSS of its process) stays within +-10% of its value at request --rss-from, to the end.

Prints a report (--json for JSON) and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = {  # kind: (weight, expected status)
    "completion": (4, 200), "completion-stream": (4, 200), "chat": (3, 200), "chat-stream": (3, 200),
    "malformed": (3, 400), "oversize": (2, 400), "unknown-model": (2, 404), "not-utf8": (1, 400),
    "lone-surrogate": (2, 400), "hang-up": (2, None),
}
PROMPTS = ("The movie was", "When I opened the door of the new cafe,", "My neighbour asked me whether",
           "Chapter One\n\nIt was a dark and stormy night")
MALFORMED = (b'{"prompt": "x", ', b"[1, 2, 3]", b'{"prompt": "x", "max_tokens": "many"}', b'{"max_tokens": 4}',
             b'"just a string"', b'{"messages": "hello"}', b"", b'{"prompt": "x", "n": 3}')
COUNTERS = ("generations", "cancelled", "served", "errors")
GAUGES = ("active", "busy", "queued")


def plan(n: int, seed: int) -> list[str]:
    """`n` request kinds in the proportions of KINDS (every kind once in the first len(KINDS)), shuffled by `seed`."""
    rounds = max(weight for weight, _ in KINDS.values())
    cycle = [kind for r in range(rounds) for kind, (weight, _) in KINDS.items() if weight > r]
    kinds = [cycle[i % len(cycle)] for i in range(n)]
    random.Random(seed).shuffle(kinds)
    return kinds


def send(http: httpx.Client, url: str, i: int, kind: str, max_tokens: int) -> dict:
    """Send request `i` of `kind`; return what happened and what was wrong with it."""
    chat = kind.startswith("chat") or (kind in ("oversize", "lone-surrogate", "hang-up") and i % 2 == 1)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    prompt = PROMPTS[i % len(PROMPTS)]
    body = {"model": "sia-edge-default", "max_tokens": max_tokens, "seed": i, "ratio": 0.2,
            "stream": kind.endswith("stream") or kind == "hang-up"}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    raw = None
    if kind == "malformed":
        raw = MALFORMED[i % len(MALFORMED)]
        path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    elif kind == "oversize":  # over the context window: the prompt alone, or with max_tokens
        if chat:
            body["messages"][0]["content"] = "hello " * 3000
        else:
            body["prompt"] = "hello " * 3000
    elif kind == "unknown-model":
        body["model"] = f"no-such-model-{i}"
    elif kind == "not-utf8":
        raw = b'{"prompt": "caf\xe9 \xff\xfe", "max_tokens": 4}'
        path = "/v1/completions"
    elif kind == "lone-surrogate":
        text = json.dumps(body)  # ASCII; the escape \ud800 is a lone surrogate once decoded
        raw = text.replace(json.dumps(prompt)[1:-1], "caf\\ud800 " + prompt[:8], 1).encode()
    elif kind == "hang-up":
        body["max_tokens"] = 256
    start = time.perf_counter()
    record = {"i": i, "kind": kind, "status": None, "problems": [], "tokens": 0}
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    try:
        if body["stream"] and raw is None:
            with http.stream("POST", url + path, content=content, headers=headers) as response:
                record["status"] = response.status_code
                if response.status_code == 200:
                    check_stream(response, record, chat, max_tokens, hang_up=kind == "hang-up")
                else:
                    response.read()
                    check_error(response, record, kind)
        else:
            response = http.post(url + path, content=content, headers=headers)
            record["status"] = response.status_code
            if response.status_code == 200:
                check_whole(response.json(), record, chat, max_tokens)
            else:
                check_error(response, record, kind)
    except (httpx.HTTPError, ValueError) as exc:
        record["problems"].append(f"{type(exc).__name__}: {exc}")
    expected = KINDS[kind][1]
    if record["status"] is not None and record["status"] >= 500:
        record["problems"].append(f"server error {record['status']}")
    elif expected is not None and record["status"] != expected:
        record["problems"].append(f"status {record['status']}, expected {expected}")
    record["seconds"] = time.perf_counter() - start
    return record


def check_error(response: httpx.Response, record: dict, kind: str) -> None:
    try:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    except (ValueError, KeyError, TypeError, AssertionError):
        record["problems"].append(f"not an OpenAI error body: {response.text[:200]!r}")
        return
    if kind in ("not-utf8", "lone-surrogate") and "UTF-8" not in error["message"]:
        record["problems"].append(f"the error does not say the text is not UTF-8: {error['message']!r}")
    if kind == "oversize" and error["code"] != "context_length_exceeded":
        record["problems"].append(f"an oversize prompt got code {error['code']!r}")


def check_whole(out: dict, record: dict, chat: bool, max_tokens: int) -> None:
    usage, sia = out.get("usage") or {}, out.get("sia") or {}
    record["tokens"] = done = usage.get("completion_tokens", -1)
    choice = out["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    if not 1 <= done <= max_tokens or done != sia.get("tokens"):
        record["problems"].append(f"usage.completion_tokens {done} vs sia.tokens {sia.get('tokens')}, "
                                  f"max_tokens {max_tokens}")
    if usage.get("total_tokens") != usage.get("prompt_tokens", 0) + done:
        record["problems"].append(f"usage does not add up: {usage}")
    if choice.get("finish_reason") not in ("stop", "length") or not isinstance(text, str):
        record["problems"].append(f"incomplete choice: {choice}")
    if choice.get("finish_reason") == "length" and done != max_tokens:
        record["problems"].append(f"finish_reason length after {done} of {max_tokens} tokens")


def check_stream(response: httpx.Response, record: dict, chat: bool, max_tokens: int, hang_up: bool) -> None:
    chunks, last, done = 0, None, False
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            record["problems"].append(f"error event in the stream: {event['error']}")
            return
        choice = event["choices"][0]
        piece = choice.get("delta", {}).get("content") if chat else choice.get("text")
        chunks += bool(piece)
        last = event
        if hang_up and chunks >= 3:
            record["hung_up"] = True
            return  # leaving the `with` closes the connection mid-stream
    if hang_up:
        record["hung_up"] = False  # the generation ended before three chunks came: a completed request
    if not done or last is None or last["choices"][0].get("finish_reason") is None:
        record["problems"].append(f"stream ended without a final chunk and [DONE] (done={done})")
        return
    usage, sia = last.get("usage") or {}, last.get("sia") or {}
    record["tokens"] = tokens = usage.get("completion_tokens", -1)
    record["chunks"] = chunks
    limit = 256 if hang_up else max_tokens
    if not 1 <= tokens <= limit or tokens != sia.get("tokens") or chunks > tokens:
        record["problems"].append(f"stream not whole: {chunks} text chunks, usage {usage}, sia.tokens "
                                  f"{sia.get('tokens')}")
    if usage.get("total_tokens") != usage.get("prompt_tokens", 0) + tokens:
        record["problems"].append(f"usage does not add up: {usage}")


def rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=60).json()


def settle(url: str, polls: int = 600) -> dict:
    """/health once nothing is active, busy or queued (hung-up generations stop at their next step)."""
    state = health(url)
    for _ in range(polls):
        if not any(state.get(key) for key in GAUGES):
            break
        time.sleep(0.2)
        state = health(url)
    return state


def check_counters(before: dict, after: dict, records: list[dict]) -> list[str]:
    problems = []
    delta = {key: after[key] - before[key] for key in COUNTERS if key in before and key in after}
    completed = sum(1 for r in records if r["status"] == 200 and not r.get("hung_up"))
    hung_up = sum(1 for r in records if r.get("hung_up"))
    bad = sum(1 for r in records if r["status"] is not None and r["status"] != 200)
    cancelled = delta.get("cancelled", 0)
    if "generations" in delta and not completed + cancelled <= delta["generations"] <= completed + hung_up:
        problems.append(f"generations grew by {delta['generations']}: expected {completed} completed + "
                        f"{cancelled} cancelled .. + {hung_up} hung up")
    if "cancelled" in delta and not 0 <= cancelled <= hung_up:
        problems.append(f"cancelled grew by {cancelled}, more than the {hung_up} hang-ups")
    if "cancelled" in delta and hung_up and cancelled == 0:
        problems.append(f"{hung_up} clients hung up mid-stream but nothing was cancelled")
    if "served" in delta and not completed <= delta["served"] <= completed + hung_up:
        problems.append(f"served grew by {delta['served']}: expected {completed} .. {completed + hung_up}")
    if "errors" in delta and not 0 <= delta["errors"] <= bad:
        problems.append(f"errors grew by {delta['errors']}, more than the {bad} refused requests")
    problems += [f"/health {key} is {after[key]} after the run" for key in GAUGES if after.get(key)]
    return problems


def run(url: str, pid: int | None, n: int, clients: int, max_tokens: int, seed: int, rss_from: int,
        progress) -> dict:
    before = settle(url)
    kinds = plan(n, seed)
    records, rss = [], []
    lock = threading.Lock()
    local = threading.local()

    def one(i: int) -> dict:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=httpx.Timeout(1800, connect=60))
        return send(local.http, url, i, kinds[i], max_tokens)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in as_completed([pool.submit(one, i) for i in range(n)]):
            with lock:
                records.append(future.result())
                if len(records) >= rss_from:
                    rss.append(rss_kb(pid))
                if len(records) % 25 == 0 or len(records) == n:
                    progress(f"{len(records)}/{n} requests, {sum(bool(r['problems']) for r in records)} with problems")
    seconds = time.perf_counter() - start
    after = settle(url)
    rss = [value for value in rss if value is not None]
    problems = [f"request {r['i']} ({r['kind']}): {p}" for r in sorted(records, key=lambda r: r["i"])
                for p in r["problems"]]
    problems += check_counters(before, after, records)
    rss_report = None
    if rss:
        base = rss[0]
        rss_report = {"from_request": rss_from, "first_kb": base, "last_kb": rss[-1], "min_kb": min(rss),
                      "max_kb": max(rss), "max_change": max(abs(v - base) for v in rss) / base}
        if rss_report["max_change"] > 0.10:
            problems.append(f"server RSS moved {100 * rss_report['max_change']:.1f}% from request {rss_from} "
                            f"({base} kB) to the end (min {min(rss)}, max {max(rss)} kB)")
    by_kind = {}
    for r in records:
        row = by_kind.setdefault(r["kind"], {"requests": 0, "statuses": {}})
        row["requests"] += 1
        row["statuses"][str(r["status"])] = row["statuses"].get(str(r["status"]), 0) + 1
    return {"url": url, "requests": n, "clients": clients, "max_tokens": max_tokens, "seconds": seconds,
            "server_errors": sum(1 for r in records if (r["status"] or 0) >= 500),
            "completed": sum(1 for r in records if r["status"] == 200 and not r.get("hung_up")),
            "hung_up": sum(1 for r in records if r.get("hung_up")),
            "tokens": sum(r["tokens"] for r in records if not r.get("hung_up")),
            "by_kind": by_kind, "health_before": before, "health_after": after, "rss": rss_report,
            "problems": problems, "ok": not problems}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Target this running server instead of starting one (e.g. http://127.0.0.1:8000).")
    parser.add_argument("--pid", type=int, help="With --url: the server's process id, for its RSS.")
    parser.add_argument("--model", help="GGUF model of the server this script starts [default: the built-in one].")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of the started server (default 1).")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="Extra option for the started `sia-edge serve` (repeatable), e.g. --server-arg=--parallel "
                             "--server-arg=4.")
    parser.add_argument("--requests", type=int, default=200, help="Requests in all (default 200).")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients (default 8).")
    parser.add_argument("-n", "--max-tokens", type=int, default=16, help="max_tokens of a valid request (default 16).")
    parser.add_argument("--rss-from", type=int, default=50,
                        help="RSS must stay within 10%% of its value after this many requests (default 50).")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the request shuffle (default 1).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1 or args.max_tokens < 1:
        parser.error("--requests, --clients and --max-tokens must be >= 1")
    if args.url and not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must be an http:// URL, got {args.url!r}")

    def progress(message: str) -> None:
        print(f"load_fault: {message}", file=sys.stderr, flush=True)

    if args.url:
        report = run(args.url.rstrip("/"), args.pid, args.requests, args.clients, args.max_tokens, args.seed,
                     args.rss_from, progress)
    else:
        from sia_edge.commands.bench_serve import LiveServer

        server_args = ["--threads", str(args.threads), *args.server_arg]
        if args.model:
            server_args += ["--model", args.model]
        progress(f"starting sia-edge serve {' '.join(server_args)}")
        with LiveServer(server_args) as server:
            report = run(server.url, server.pid, args.requests, args.clients, args.max_tokens, args.seed,
                         args.rss_from, progress)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['requests']} requests from {report['clients']} clients in {report['seconds']:.0f} s: "
              f"{report['completed']} completed ({report['tokens']} tokens), {report['hung_up']} hung up, "
              f"{report['server_errors']} 5xx")
        for kind, row in report["by_kind"].items():
            print(f"  {kind:18} {row['requests']:4}  statuses {row['statuses']}")
        if report["rss"]:
            r = report["rss"]
            print(f"  server RSS from request {r['from_request']}: {r['first_kb'] / 1024:.0f} -> "
                  f"{r['last_kb'] / 1024:.0f} MB (range {r['min_kb'] / 1024:.0f}-{r['max_kb'] / 1024:.0f}, "
                  f"max change {100 * r['max_change']:.1f}%)")
        keys = [k for k in (*COUNTERS, *GAUGES) if k in report["health_after"]]
        print("  /health " + ", ".join(f"{k} {report['health_before'][k]} -> {report['health_after'][k]}"
                                       for k in keys))
        print("OK" if report["ok"] else "FAILED:\n  " + "\n  ".join(report["problems"]))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
