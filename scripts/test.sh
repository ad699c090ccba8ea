#!/usr/bin/env bash
# Install pairedit with its test extras (CPU torch first) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m ruff check src tests
python -m pytest
