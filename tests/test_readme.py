"""The README's Python example runs as written (on the real built-in model)."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    proc = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-3].strip() in ("length", "eos")  # the stream's stop reason, then the two batched results
    assert sorted(line.split(" ", 1)[0] for line in lines[-2:]) == ["0", "1"]


def test_readme_first_screen_has_the_install_and_test_commands():
    first_screen = README.read_text().split("\n## ")[0]
    assert 'pip install ".[train,test]" && sia-edge generate "The movie was" --json' in first_screen
    assert "python -m pytest" in first_screen
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install ".[train,test]"' in ci and "python -m pytest" in ci
