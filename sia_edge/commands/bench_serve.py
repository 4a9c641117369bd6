"""`sia-edge bench serve`: a live `sia-edge serve` under 1, 2, 4, 8 concurrent clients, against the same server
with --parallel 1, in one run; and conversations (every client's turns growing, as chat clients send them) that
show what prompt-prefix reuse and chunked prefill change (`--servers changes` adds the --parallel N server without
each of them).

Each server is a subprocess on 127.0.0.1 (a free port), driven by the official `openai` client: per client count,
every client sends a bounded number of requests, mixed completion / chat and streaming / not, SIA at ratio 0.2, the
same seeds for both servers. Reported per client count: aggregate tokens/s (tokens of all requests over the wall
time of the round), time to first token and inter-token latency (from the streamed requests), and the tokens/s
ratio against the --parallel 1 server. As with `sia-edge bench`, read the ratios: absolute figures on a shared
machine move between runs.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import click

from ..engine import MAX_PARALLEL
from .common import model_options

BENCH_PROMPTS = ("The movie was", "When I opened the door of the new cafe,", "My neighbour asked me whether")
CHAT_PROMPTS = ("Tell me about your favourite place.", "How was the concert?", "What should I cook tonight?")
PLACES = ("Lisbon", "Oslo", "a small village by the sea", "Kyoto", "Montreal", "the mountains", "Nairobi", "Berlin")
FOLLOW_UPS = ("What should I see first?", "And where should I eat?", "How do I meet people there?",
              "Is it expensive to live there?", "What is the weather like in winter?", "Thanks! Any last advice?")
# --servers changes: the --parallel N server with and without each of issue 21's changes, beside --parallel 1
SERVER_VARIANTS = {
    "parallel": [("parallel 1", 1, []), ("parallel N", None, [])],
    "changes": [("parallel 1", 1, []), ("parallel N, neither", None, ["--no-prefix-reuse", "--prefill-chunk", "0"]),
                ("parallel N, prefix reuse", None, ["--prefill-chunk", "0"]),
                ("parallel N, prefix reuse without RAM cache", None, ["--cache-ram", "0"]),
                ("parallel N, chunked prefill", None, ["--no-prefix-reuse"]), ("parallel N", None, [])],
}


# --- a live server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict:
    """This environment, with this copy of sia_edge first on the path: the server runs the code the bench runs."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


@lru_cache(maxsize=1)
def serve_options() -> frozenset[str]:
    """The options this installation's `sia-edge serve` accepts (e.g. whether it has --parallel yet)."""
    proc = subprocess.run([sys.executable, "-m", "sia_edge", "serve", "--help"], capture_output=True, text=True,
                          timeout=120, env=child_env())
    return frozenset(word.strip(",;[]") for word in proc.stdout.split() if word.startswith("--"))


class LiveServer:
    """`sia-edge serve ARGS` as a subprocess on 127.0.0.1 at a free port, up until the context exits.

    `url` is the base URL, `pid` the server's process id (for its RSS). Startup waits for /health by a bounded
    number of polls, and fails with the server's stderr if the process exits first."""

    def __init__(self, args: list[str], polls: int = 600, env: dict | None = None) -> None:
        self.args, self.polls, self.env = list(args), polls, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        self._log.seek(0)
        return "".join(self._log.read().decode("utf-8", "replace").splitlines(keepends=True)[-lines:])

    def __enter__(self) -> "LiveServer":
        import httpx

        self._log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "sia_edge", "serve", *self.args, "--host", "127.0.0.1",
                   "--port", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env=self.env if self.env is not None else child_env())
        for _ in range(self.polls):
            if self.proc.poll() is not None:
                raise click.ClickException(f"the server exited with code {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise click.ClickException(f"the server did not answer /health after {self.polls} polls")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()


def server_args(model, value_model, n_ctx, threads, gpu_layers) -> list[str]:
    """`sia-edge serve` options for the models, as the bench was given them."""
    args = ["--ctx", str(n_ctx), "--gpu-layers", str(gpu_layers)]
    for flag, value in (("--model", model), ("--value-model", value_model), ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    return args


# --- the clients -------------------------------------------------------------------------------------------------


def one_request(client, index: int, max_tokens: int, ratio: float, seed: int) -> dict:
    """One request of kind `index % 4` (not streamed / streamed, completion / chat), timed on the client."""
    stream, chat = bool(index % 2), bool(index // 2 % 2)
    args = dict(model="sia-edge-default", max_tokens=max_tokens, seed=seed, extra_body={"ratio": ratio})
    start = time.perf_counter()
    times = []
    if chat:
        messages = [{"role": "user", "content": CHAT_PROMPTS[index % len(CHAT_PROMPTS)]}]
        out = client.chat.completions.create(messages=messages, stream=stream, **args)
    else:
        out = client.completions.create(prompt=BENCH_PROMPTS[index % len(BENCH_PROMPTS)], stream=stream, **args)
    if stream:
        times, _, usage = drain(out, chat)
    else:
        usage = out.usage
        times.append(time.perf_counter())
    end = time.perf_counter()
    if usage is None:
        raise click.ClickException(f"request {index}: the response carried no usage")
    return {"kind": ("chat" if chat else "completion") + (" stream" if stream else ""), "stream": stream,
            "tokens": usage.completion_tokens, "chunks": len(times) if stream else None, "seconds": end - start,
            "ttft": times[0] - start if stream and times else None,
            "gaps": [b - a for a, b in zip(times, times[1:])] if stream else []}


def drain(out, chat: bool) -> tuple[list[float], list[str], object]:
    """Read a streamed response: when each text piece arrived, the pieces, and the usage of its last chunk."""
    times, pieces, usage = [], [], None
    for chunk in out:
        choice = chunk.choices[0] if chunk.choices else None
        text = (choice.delta.content if chat else choice.text) if choice else None
        if text:
            times.append(time.perf_counter())
            pieces.append(text)
        usage = chunk.usage or usage
    return times, pieces, usage


def run_clients(url: str, clients: int, client_loop) -> tuple[list[dict], float]:
    """`clients` threads, all starting together, each running `client_loop(openai client, its index)` -> records;
    returns every record and the wall time."""
    import openai

    barrier = threading.Barrier(clients)

    def run(c: int) -> list:
        client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=1800)
        barrier.wait()
        return client_loop(client, c)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        records = [r for rs in pool.map(run, range(clients)) for r in rs]
    return records, time.perf_counter() - start


def run_round(url: str, clients: int, per_client: int, max_tokens: int, ratio: float, seed: int) -> dict:
    """`clients` threads, each sending `per_client` requests one after another; all start together."""

    def client_loop(client, c: int) -> list:
        done = []
        for j in range(per_client):
            index = c + j * clients  # every client goes through the four kinds
            try:
                done.append(one_request(client, index, max_tokens, ratio, seed + index))
            except Exception as exc:  # noqa: BLE001 - reported, the round goes on
                done.append({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
        return done

    records, seconds = run_clients(url, clients, client_loop)
    return summarise_round(clients, records, seconds)


def conversation_turn(client, messages: list[dict], max_tokens: int, ratio: float, seed: int) -> dict:
    """One streamed chat turn: its text, timings and usage (prompt tokens, and of those cached in a slot)."""
    start = time.perf_counter()
    out = client.chat.completions.create(model="sia-edge-default", messages=messages, stream=True,
                                         max_tokens=max_tokens, seed=seed, extra_body={"ratio": ratio})
    times, pieces, usage = drain(out, chat=True)
    if usage is None:
        raise click.ClickException("a conversation turn's stream carried no usage")
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details is not None else 0
    return {"text": "".join(pieces), "tokens": usage.completion_tokens, "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": cached, "seconds": time.perf_counter() - start,
            "ttft": times[0] - start if times else None, "gaps": [b - a for a, b in zip(times, times[1:])]}


def run_conversations(url: str, clients: int, turns: int, max_tokens: int, ratio: float, seed: int) -> dict:
    """`clients` conversations at once, each `turns` turns long: every turn sends the whole conversation so far
    (as chat clients do) and appends the reply. Reported per turn: time to first token, and prompt tokens
    decoded (not found cached) against the tokens the conversation grew by since the last turn's reply."""

    def client_loop(client, c: int) -> list:
        messages = [{"role": "user", "content": f"Hi! I just moved to {PLACES[c % len(PLACES)]}."}]
        done, previous = [], None
        for turn in range(turns):
            try:
                record = conversation_turn(client, messages, max_tokens, ratio, seed + 100 * c + turn)
            except Exception as exc:  # noqa: BLE001 - reported, the conversation stops
                done.append({"kind": "error", "turn": turn + 1, "error": f"{type(exc).__name__}: {exc}"})
                break
            # what the prompt grew by: the new message and its template, plus the reply as re-rendered
            grown = record["prompt_tokens"] - (previous["prompt_tokens"] if previous else 0)
            done.append({"kind": "chat stream", "client": c, "turn": turn + 1, "new_tokens": grown,
                         "decoded_tokens": record["prompt_tokens"] - record["cached_tokens"],
                         **{k: v for k, v in record.items() if k != "text"}})
            messages += [{"role": "assistant", "content": record["text"]},
                         {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]
            previous = record
        return done

    records, seconds = run_clients(url, clients, client_loop)
    summary = summarise_round(clients, records, seconds)
    ok = [r for r in records if r["kind"] != "error"]
    per_turn = []
    for turn in range(1, turns + 1):
        these = [r for r in ok if r["turn"] == turn]
        ttfts = [r["ttft"] for r in these if r["ttft"] is not None]
        per_turn.append({"turn": turn, "requests": len(these),
                         "ttft_ms_p50": 1e3 * statistics.median(ttfts) if ttfts else None,
                         "prompt_tokens_p50": median_of(these, "prompt_tokens"),
                         "new_tokens_p50": median_of(these, "new_tokens"),
                         "decoded_tokens_p50": median_of(these, "decoded_tokens")})
    first, last = per_turn[0]["ttft_ms_p50"], per_turn[-1]["ttft_ms_p50"]
    summary.update(turns=per_turn, ttft_last_vs_first=last / first if first and last is not None else None)
    return summary


def median_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise_round(clients: int, records: list[dict], seconds: float) -> dict:
    ok = [r for r in records if r["kind"] != "error"]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r.get("ttft") is not None]
    gaps = [g for r in ok for g in r["gaps"]]

    def ms(value):
        return None if value is None else 1e3 * value

    return {"clients": clients, "requests": len(records), "errors": len(records) - len(ok), "tokens": tokens,
            "seconds": seconds, "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
            "ttft_ms_p50": ms(statistics.median(ttfts) if ttfts else None), "ttft_ms_p95": ms(percentile(ttfts, .95)),
            "itl_ms_p50": ms(statistics.median(gaps) if gaps else None), "itl_ms_p95": ms(percentile(gaps, .95)),
            "records": records}


# --- the command -------------------------------------------------------------------------------------------------


def calls_per_step(before: dict, after: dict) -> float | None:
    """Value-model calls per batched decoding step during a round (/health's counters of a scheduled server; None
    for a one-at-a-time server, which has no batched steps)."""
    rounds = (after.get("rounds") or 0) - (before.get("rounds") or 0)
    calls = (after.get("value_model_calls") or 0) - (before.get("value_model_calls") or 0)
    return calls / rounds if rounds > 0 else None


def parse_clients(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--clients")
    if not counts or any(c < 1 for c in counts):
        raise click.BadParameter(f"client counts must be >= 1, got {text!r}", param_hint="--clients")
    return counts


def format_table(report: dict) -> str:
    def f(value, fmt="{:.0f}"):
        return "" if value is None else fmt.format(value)

    lines = [f"model {report['model'] or 'default'}; {report['requests_per_client']} requests per client, "
             f"{report['max_tokens']} new tokens each, SIA ratio {report['ratio']}; servers: "
             + ", ".join(f"{s['label']} ({' '.join(s['args']) or 'defaults'})" for s in report["servers"])]
    single = [r for r in report["rows"] if r["scenario"] == "single"]
    if single:
        lines += ["", "| clients | server | tok/s | x parallel 1 | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | "
                      "ITL p95 ms | VM calls / step | requests | errors | tokens |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in sorted(single, key=lambda r: (r["clients"], r["server_index"])):
            lines.append(f"| {row['clients']} | {row['server']} | {row['tokens_per_second']:.1f} | "
                         f"{f(row['vs_parallel_1'], '{:.2f}')} | {f(row['ttft_ms_p50'])} | {f(row['ttft_ms_p95'])} | "
                         f"{f(row['itl_ms_p50'])} | {f(row['itl_ms_p95'])} | "
                         f"{f(row.get('vm_calls_per_step'), '{:.2f}')} | {row['requests']} | {row['errors']} | "
                         f"{row['tokens']} |")
    for row in (r for r in report["rows"] if r["scenario"] == "conversation"):
        lines += ["", f"conversations on {row['server']}: {row['clients']} clients x {len(row['turns'])} turns, "
                      f"{row['tokens_per_second']:.1f} tok/s, ITL p95 {f(row['itl_ms_p95'])} ms, TTFT turn "
                      f"{len(row['turns'])} / turn 1 = {f(row['ttft_last_vs_first'], '{:.2f}')}, "
                      f"{row['errors']} errors",
                  "| turn | TTFT p50 ms | prompt tokens | grew by | decoded |", "|---|---|---|---|---|"]
        lines += [f"| {t['turn']} | {f(t['ttft_ms_p50'])} | {f(t['prompt_tokens_p50'])} | {f(t['new_tokens_p50'])} | "
                  f"{f(t['decoded_tokens_p50'])} |" for t in row["turns"]]
    return "\n".join(lines)


@click.command("serve")
@model_options
@click.option("--clients", default="1,2,4,8", show_default=True,
              help="Concurrent client counts to measure (single-turn scenario), comma-separated.")
@click.option("--parallel", type=click.IntRange(2, MAX_PARALLEL), default=4, show_default=True,
              help="Slots of the batching servers (the first server has --parallel 1).")
@click.option("--servers", type=click.Choice(sorted(SERVER_VARIANTS)), default="parallel", show_default=True,
              help="parallel: --parallel 1 and --parallel N. changes: also --parallel N without prefix reuse, "
                   "without chunked prefill, and without both (what each change is worth, in the same run).")
@click.option("--scenario", type=click.Choice(["single", "conversation", "both"]), default="both",
              show_default=True,
              help="single: independent one-turn requests per client count. conversation: --conversations clients "
                   "at once, each --turns turns, every turn sending the whole conversation so far.")
@click.option("--requests", "per_client", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests each client sends, one after another, per client count (single-turn scenario).")
@click.option("--conversations", type=click.IntRange(min=1), default=8, show_default=True,
              help="Concurrent conversations (conversation scenario).")
@click.option("--turns", type=click.IntRange(min=1), default=6, show_default=True,
              help="Turns per conversation (conversation scenario).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="New tokens per request.")
@click.option("--ratio", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="SIA steering ratio of every request.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the first request (+1 per request).")
@click.option("--json", "as_json", is_flag=True, help="Print the report (with every request's record) as JSON.")
def bench_serve_command(model, value_model, n_ctx, threads, gpu_layers, clients, parallel, servers, scenario,
                        per_client, conversations, turns, max_tokens, ratio, seed, as_json):
    """Tokens/s and latency of a live `sia-edge serve` under concurrent clients and conversations, --parallel N
    against 1 (and, with --servers changes, without prefix reuse and chunked prefill)."""
    counts = parse_clients(clients)
    supported = "--parallel" in serve_options()
    if not supported:
        click.echo("sia-edge: bench serve: this `sia-edge serve` has no --parallel; every server serialises",
                   err=True)
    variants = [(label, slots or parallel, extra if supported else [])
                for label, slots, extra in SERVER_VARIANTS[servers]]
    base = server_args(model, value_model, n_ctx, threads, gpu_layers)
    rows, described = [], []
    for index, (label, slots, extra) in enumerate(variants):
        label = label.replace("parallel N", f"parallel {slots}")
        args = (["--parallel", str(slots)] if supported else []) + extra
        described.append({"label": label, "parallel": slots, "args": args})
        click.echo(f"sia-edge: bench serve: starting the server: {label}", err=True)
        with LiveServer(base + args) as server:
            run_round(server.url, 1, 1, min(max_tokens, 4), ratio, seed)  # warm-up, not reported
            for row in measure_server(server.url, label, counts, per_client, conversations, turns, max_tokens, ratio,
                                      seed, scenario):
                rows.append({"server": label, "server_index": index, "parallel": slots, **row})
    compare(rows)
    report = {"model": model, "max_tokens": max_tokens, "requests_per_client": per_client, "ratio": ratio,
              "clients": counts, "parallel": sorted({v["parallel"] for v in described}), "servers": described,
              "parallel_supported": supported, "rows": rows}
    if not as_json:
        for row in rows:
            row.pop("records")
    click.echo(json.dumps(report, indent=1) if as_json else format_table(report))
    if all(row["errors"] == row["requests"] for row in rows):
        raise click.ClickException("every request failed (see the report)")


def measure_server(url: str, label: str, counts: list[int], per_client: int, conversations: int, turns: int,
                   max_tokens: int, ratio: float, seed: int, scenario: str) -> list[dict]:
    """The scenarios' rows for one live server, with the value-model calls per batched step from /health."""
    import httpx

    def health() -> dict:
        return httpx.get(url + "/health", timeout=30).json()

    rows = []
    if scenario in ("single", "both"):
        for count in counts:
            click.echo(f"sia-edge: bench serve: {label}, {count} clients x {per_client} requests", err=True)
            before = health()
            row = run_round(url, count, per_client, max_tokens, ratio, seed)
            rows.append({"scenario": "single", **row, "vm_calls_per_step": calls_per_step(before, health())})
            click.echo(f"sia-edge: bench serve:   {row['tokens_per_second']:.1f} tok/s, {row['errors']} errors",
                       err=True)
    if scenario in ("conversation", "both"):
        click.echo(f"sia-edge: bench serve: {label}, {conversations} conversations x {turns} turns", err=True)
        before = health()
        row = run_conversations(url, conversations, turns, max_tokens, ratio, seed)
        rows.append({"scenario": "conversation", **row, "vm_calls_per_step": calls_per_step(before, health())})
        click.echo(f"sia-edge: bench serve:   {row['tokens_per_second']:.1f} tok/s, TTFT last/first turn "
                   f"{row['ttft_last_vs_first'] or float('nan'):.2f}, {row['errors']} errors", err=True)
    return rows


def compare(rows: list[dict]) -> None:
    """Each row's tokens/s against the --parallel 1 server's in the same scenario and client count (vs_parallel_1)
    and, when it ran, against the --parallel N server without prefix reuse or chunked prefill (vs_neither)."""
    def key(row):
        return row["scenario"], row["clients"]

    single = {key(r): r["tokens_per_second"] for r in rows if r["parallel"] == 1}
    neither = {key(r): r["tokens_per_second"] for r in rows if r["server"].endswith(", neither")}
    for row in rows:
        for name, reference in (("vs_parallel_1", single), ("vs_neither", neither)):
            base = reference.get(key(row))
            row[name] = row["tokens_per_second"] / base if base else None
