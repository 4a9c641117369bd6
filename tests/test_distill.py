"""`sia-edge vm distill`: the provocative prompt set, sampling cache, reward checks, training (real Gemma)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "tools" / "prompts"


def _lines(name: str) -> list[str]:
    return (PROMPTS / f"provocative-{name}.txt").read_text(encoding="utf-8").splitlines()


def test_provocative_prompt_splits_are_disjoint_and_large_enough():
    splits = {name: _lines(name) for name in ("train", "calibration", "dev")}
    assert len(splits["train"]) >= 200 and len(splits["calibration"]) >= 30 and len(splits["dev"]) >= 100
    assert sum(map(len, splits.values())) >= 330
    for name, lines in splits.items():
        assert all(line.strip() == line and line for line in lines), f"{name}: blank or padded line"
        assert len(set(lines)) == len(lines), f"{name} repeats a prompt"
    normalised = {name: {" ".join(line.lower().split()) for line in lines} for name, lines in splits.items()}
    assert not normalised["train"] & normalised["calibration"]
    assert not normalised["train"] & normalised["dev"]
    assert not normalised["calibration"] & normalised["dev"]
