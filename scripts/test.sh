#!/usr/bin/env bash
# Set up, then run every check: ruff, mypy --strict on the package, mypy on the tests and the
# benchmarks, the suite.
# Under CI=true, tests that need root or a tool fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.tools/bin:$PATH"
.venv/bin/ruff check observer tests bench
.venv/bin/mypy
.venv/bin/mypy tests bench
.venv/bin/python -m pytest "$@"
