"""sia-edge in a desktop window: a Tkinter app (standard library only) that loads the models without freezing,
streams a steered continuation, stops it on demand, switches objective, and highlights the junctions (the tokens
at which the value model rescored the base model's candidates). Hover a highlighted token to see why it was chosen.

    python examples/desktop_chat.py [--model GGUF] [--value-model ONNX] [--tau 2.02] [--max-tokens 128]

How it stays responsive: Tk may only be used from the thread that created the window, so the slow work (loading,
generating) runs on worker threads that never touch a widget. They put messages on a queue, which the window
drains every POLL_MS with `after`. Stop sets a threading.Event that the engine checks before every token.
docs/embedding.md says what else an app needs to know.
"""

from __future__ import annotations

import argparse
import math
import queue
import re
import threading
import tkinter as tk
from pathlib import Path
from tkinter import ttk

POLL_MS = 40  # how often the window drains the workers' queue: smooth streaming at negligible cost
PROMPT = "My first day at the new job was"
HINT = "Highlighted tokens are junctions, where the value model steered: hover one to see how it was chosen."


# --- worker threads: they only ever call `post`, never Tk -------------------------------------------------------


def load(options: argparse.Namespace, post) -> None:
    """Build the engine and load every objective's value model, reporting each stage."""
    try:
        # llama.cpp and onnxruntime are imported here, off the window's thread: importing them takes a moment too
        from sia_edge.engine import Engine
        from sia_edge.errors import SiaError
        from sia_edge.models import OBJECTIVES, resolve_base_model

        post("progress", "preparing the base model file", 0.05)
        path = resolve_base_model(options.model)  # the built-in GGUF is joined from its package once, then cached
        post("progress", f"loading {path.name} and its value model", 0.2)
        # parallel=1: one generation at a time on the model's own context; a seed replays exactly, and no batched
        # context for concurrent requests is allocated (docs/embedding.md measures what that saves)
        engine = Engine(model=path, value_model=options.value_model, threads=options.threads, parallel=1)
        objectives = {Path(options.value_model).name: str(options.value_model)} if options.value_model else {}
        for i, name in enumerate(OBJECTIVES):
            post("progress", f"loading the {name} value model", 0.7 + 0.3 * i / len(OBJECTIVES))
            try:
                engine.value_model_for(name)  # loaded once and kept, so switching objective later is instant
                objectives[name] = name
            except SiaError:
                pass  # no value model for this objective serves this base model: it gets no button
        post("loaded", engine, objectives)
    except Exception as exc:  # noqa: BLE001  (whatever it is, the window must say so, not wait forever)
        post("error", f"could not load the models: {exc}")


def generate(engine, prompt: str, objective: str, settings: dict, cancel: threading.Event, post) -> None:
    """Stream one continuation; `cancel` stops it before its next token."""
    try:
        stream = engine.stream(prompt, value_model=objective, cancel=cancel, log_probs=True, **settings)
        for event in stream:
            post("token", event)
        post("done", stream.result)
    except Exception as exc:  # noqa: BLE001  (a SiaError is a one-line message; anything else, still say it)
        post("error", str(exc))


# --- the window: everything below runs on Tk's thread -----------------------------------------------------------


class DesktopChat:
    """The window. Tests drive it through its widgets (`go`, `stop`, `prompt`, `text`) and read `status`."""

    def __init__(self, root: tk.Tk, options: argparse.Namespace) -> None:
        self.root, self.options = root, options
        self.messages: queue.Queue = queue.Queue()
        self.engine = None
        self.cancel = threading.Event()
        self.junctions: dict[str, object] = {}  # Text tag name -> the TokenEvent of that junction
        self.result = None  # the last GenerationResult
        self.busy = False  # a generation is running
        self._build()
        threading.Thread(target=load, args=(options, self.post), daemon=True).start()
        root.after(POLL_MS, self.poll)

    def _build(self) -> None:
        root = self.root
        root.title("sia-edge: steered text")
        root.geometry("900x560")
        top = ttk.Frame(root, padding=8)
        top.pack(fill="x")
        self.prompt = ttk.Entry(top)
        self.prompt.insert(0, self.options.prompt)
        self.prompt.pack(side="left", fill="x", expand=True)
        self.prompt.bind("<Return>", lambda _: self.go.invoke())
        root.bind("<Escape>", lambda _: self.stop.invoke())
        self.go = ttk.Button(top, text="Generate", command=self.start, state="disabled")
        self.go.pack(side="left", padx=(8, 0))
        self.stop = ttk.Button(top, text="Stop", command=self.request_stop, state="disabled")
        self.stop.pack(side="left", padx=(4, 0))
        self.objective = tk.StringVar()
        self.objectives = ttk.Frame(root, padding=(8, 0))
        self.objectives.pack(fill="x")
        ttk.Label(self.objectives, text="Steer toward:").pack(side="left")
        self.text = tk.Text(root, wrap="word", height=14, font=("Helvetica", 13), padx=8, pady=8)
        self.text.pack(fill="both", expand=True, padx=8, pady=8)
        self.text.tag_configure("prompt", foreground="#555555")
        self.text.tag_configure("junction", background="#ffe28a")
        self.text.tag_configure("junction-alt", background="#ffc85a")  # every other one: neighbours stay apart
        self.text.tag_configure("hovered", underline=True)  # the token the details line describes
        self.text.tag_configure("stopped", foreground="#b00020", font=("Helvetica", 11, "italic"))
        self.text.bind("<Motion>", self.hover)
        self.text["state"] = "disabled"  # read-only (text can still be selected and copied); `write` adds to it
        self.details = tk.StringVar(value=HINT)
        ttk.Label(root, textvariable=self.details, wraplength=880, padding=(8, 0)).pack(fill="x")
        bottom = ttk.Frame(root, padding=8)
        bottom.pack(fill="x")
        self.progress = ttk.Progressbar(bottom, length=160, maximum=1.0)
        self.progress.pack(side="left")
        self.status = tk.StringVar(value="starting")
        ttk.Label(bottom, textvariable=self.status).pack(side="left", padx=8)

    def post(self, kind: str, *payload) -> None:
        """The one door from worker threads into the window: a queue, read on Tk's thread by `poll`."""
        self.messages.put((kind, payload))

    def poll(self) -> None:
        while True:
            try:
                kind, payload = self.messages.get_nowait()
            except queue.Empty:
                break
            getattr(self, "on_" + kind)(*payload)
        self.root.after(POLL_MS, self.poll)

    # --- messages from the workers ------------------------------------------------------------------------------

    def on_progress(self, what: str, fraction: float) -> None:
        self.status.set(what + " ...")
        self.progress["value"] = fraction

    def on_loaded(self, engine, objectives: dict[str, str]) -> None:
        self.engine = engine
        for label, spec in objectives.items():
            ttk.Radiobutton(self.objectives, text=label, value=spec, variable=self.objective).pack(side="left")
        self.objective.set(next(iter(objectives.values()), ""))
        self.progress["value"] = 1.0
        steered_by = engine.value_model.path.name if engine.value_model else "nothing"
        self.status.set(f"ready: {engine.base.name}, steered by {steered_by}")
        self.go["state"] = "normal"
        self.prompt.focus_set()

    def on_token(self, event) -> None:
        # highlight a junction's visible text only: Tk paints a highlighted space or line break where a line wraps
        # or ends to the window's edge
        before, visible, after = re.fullmatch(r"(\s*)(.*?)(\s*)", event.text, re.DOTALL).groups()
        tags: tuple[str, ...] = ()
        if event.junction and visible:
            tag = f"junction-{event.index}"
            self.junctions[tag] = event
            tags = ("junction", tag) + (("junction-alt",) if len(self.junctions) % 2 == 0 else ())
        self.write(before)
        self.write(visible, tags)
        self.write(after)
        self.text.see("end")
        self.progress["value"] = (event.index + 1) / self.options.max_tokens
        self.status.set(f"generating: {event.index + 1} tokens, {len(self.junctions)} junctions")

    def on_done(self, result) -> None:
        self.result = result
        stats = result.stats
        if result.stop_reason == "cancelled":
            self.write("  [stopped]", ("stopped",))
        self.status.set(f"{result.stop_reason}: {stats.tokens} tokens, {stats.junctions} junctions "
                        f"({stats.junction_ratio:.0%}), {stats.tokens_per_second:.1f} tok/s, "
                        f"steered by {result.value_model or 'nothing'}")
        self._idle()

    def on_error(self, message: str) -> None:
        self.status.set("error: " + message)
        self._idle()

    # --- user actions -----------------------------------------------------------------------------------------

    def start(self) -> None:
        prompt = self.prompt.get()
        if self.engine is None or self.busy or not prompt.strip():
            return
        self.busy, self.result = True, None
        self.cancel = threading.Event()  # a fresh one: a late Stop must not cancel the next generation
        self.junctions.clear()
        self.details.set(HINT)
        self.text["state"] = "normal"
        self.text.delete("1.0", "end")
        self.write(prompt, ("prompt",))
        self.progress["value"] = 0.0
        self.go["state"], self.stop["state"] = "disabled", "normal"
        settings = {"tau": self.options.tau, "max_tokens": self.options.max_tokens, "seed": self.options.seed}
        threading.Thread(target=generate, daemon=True, args=(self.engine, prompt, self.objective.get(), settings,
                                                             self.cancel, self.post)).start()

    def write(self, text: str, tags: tuple[str, ...] = ()) -> None:
        self.text["state"] = "normal"
        self.text.insert("end", text, tags)
        self.text["state"] = "disabled"

    def request_stop(self) -> None:
        self.cancel.set()  # the worker sees it before its next token and ends its stream with stop_reason cancelled
        self.status.set("stopping ...")

    def _idle(self) -> None:
        self.busy = False
        self.go["state"] = "normal" if self.engine is not None else "disabled"
        self.stop["state"] = "disabled"

    def hover(self, mouse) -> None:
        names = self.text.tag_names(f"@{mouse.x},{mouse.y}")
        tag = next((name for name in names if name in self.junctions), None)
        if tag is not None:
            self.text.tag_remove("hovered", "1.0", "end")
            self.text.tag_add("hovered", *self.text.tag_ranges(tag))
            self.details.set(self.describe(self.junctions[tag]))

    def describe(self, event) -> str:
        """A junction in a few lines: its entropy, the chosen token's base probability (log_probs=True asked for it)
        and the k candidates in the base model's order with their rewards."""
        def piece(token: int) -> str:
            return repr(self.engine.base.token_bytes(token).decode("utf-8", "replace"))

        candidates = ", ".join(f"{piece(t)} {r:+.2f}{' ✓' if i == event.rank else ''}"
                               for i, (t, r) in enumerate(zip(event.candidates, event.rewards)))
        return (f"Token {event.index}: entropy {event.entropy:.2f} nats, so the value model scored the candidates; "
                f"{piece(event.token_id)} was chosen, the base model's #{event.rank + 1} (p = "
                f"{math.exp(event.log_prob):.2f} before steering). "
                f"Candidates, most likely first, with their rewards: {candidates}")

    def close(self) -> None:
        self.cancel.set()
        if self.engine is not None:
            self.engine.close()  # waits for a running generation to stop at its next token, then frees llama.cpp
        self.root.destroy()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A desktop window streaming steered text from sia-edge.")
    parser.add_argument("--model", help="GGUF file to load [default: the built-in Gemma 3 270M base]")
    parser.add_argument("--value-model", help="your own ONNX value model (models/README.md) [default: shipped]")
    parser.add_argument("--tau", type=float, help="steer where the top-k entropy is at least this [default: 2.02]")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, help="replay a generation exactly [default: a fresh one]")
    parser.add_argument("--threads", type=int, help="llama.cpp threads [default: every core]")
    parser.add_argument("--prompt", default=PROMPT, help="the text in the prompt box at start")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)  # before Tk, so --help works without a display
    root = tk.Tk()
    app = DesktopChat(root, options)
    root.protocol("WM_DELETE_WINDOW", app.close)
    root.mainloop()


if __name__ == "__main__":
    main()
