"""Rebuild docs/chat-page.png: the chat page mid-conversation with one junction's details open.

    PYTHONPATH=. python tools/chat_page_screenshot.py [--out docs/chat-page.png] [--width 1200 --height 900]

Starts `sia-edge serve --parallel 1` (built-in Gemma 3 270M and its shipped value model) on a free port, drives the
page in Debian's chromium with Playwright (never Playwright's own browser download), and focuses a junction of the
last reply where steering changed the favourite and the steered favourite was drawn (else its last junction). The
seeds are fixed and one slot replays a seed exactly, so it redraws the same replies.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TURNS = [("What did you think of the film?", {"seed": "3", "tau": "1.5"}),
         ("And the music?", {"seed": "4", "tau": "1.5"})]


# the last junction where steering changed the favourite and the token drawn is the steered favourite (the picture
# of steering at work); else the last junction
PICK = """(spans) => {
  const steered = (t) => {
    const c = t.sia.candidates || [];
    const top = (key) => c.reduce((b, x, i) => (x[key] > c[b][key] ? i : b), 0);
    return c.length > 0 && top("steered_probability") !== top("probability") && c[top("steered_probability")].chosen;
  };
  const last = (test) => spans.map((s, i) => (s.tokens.some(test) ? i : -1)).filter((i) => i >= 0).pop();
  return last(steered) ?? last((t) => t.sia.junction) ?? 0;
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sia_edge", "serve", "--parallel", "1", "--threads", "1",
                             "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the server exited")
            time.sleep(0.3)
    raise SystemExit("the server did not come up")


def shoot(base: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(base + "/")
        page.wait_for_function("document.querySelector('#gate').options.length > 0")
        for message, fields in TURNS:
            for name, value in fields.items():
                page.fill(f"#{name}", value)
            page.fill("#message", message)
            page.press("#message", "Enter")
            page.wait_for_selector(".message.assistant:last-of-type .stats", timeout=300_000)
        spans = page.locator(".message.assistant:last-of-type .tok")
        spans.nth(spans.evaluate_all(PICK)).focus()
        page.mouse.move(0, 0)
        page.screenshot(path=str(out), full_page=True)  # the details may reach below the window
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "chat-page.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    proc, base = start_server()
    try:
        shoot(base, args.out, args.width, args.height)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
