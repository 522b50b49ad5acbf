#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest "$@"
