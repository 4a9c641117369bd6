"""Which code ran: the package version, where it was imported from and, when that is a git checkout, its commit.
Eval's run.json records it, because a background run once used an older installed copy than the checkout and
nothing in its output could show it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


def software(package_dir: Path = PACKAGE_DIR) -> dict:
    """version: the imported code's; path: where it was imported from; checkout: whether that is a source
    checkout (an editable install, or the checkout on PYTHONPATH) rather than an installed copy; commit: the
    checkout's HEAD ("+dirty" with uncommitted changes to tracked files), None for a copy or without git."""
    root = package_dir.parent
    return {"version": __version__, "path": str(package_dir), "checkout": (root / ".git").exists(),
            "commit": git_commit(root)}


def git_commit(root: Path) -> str | None:
    """The commit checked out at `root`, if `root` is the top of a git work tree (not merely inside one: a
    site-packages within some other repository is not a checkout of this package); None without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(root).resolve():
            return None
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def differs(before: dict | None, now: dict) -> bool:
    """Whether two records name different code: another version or another commit."""
    before = before or {}
    return (before.get("version"), before.get("commit")) != (now["version"], now["commit"])


def describe(record: dict | None) -> str:
    """'sia-edge 0.1.0 at 6d710c5 (/work/main/sia_edge)', for messages."""
    if not record:
        return "an unrecorded sia-edge version"
    commit = record.get("commit")
    where = f"at {commit[:12]}" if commit else ("checkout" if record.get("checkout") else "installed copy")
    return f"sia-edge {record.get('version')} {where} ({record.get('path')})"
