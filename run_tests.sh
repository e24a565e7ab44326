#!/bin/sh
# The whole test suite: sets up .venv when missing, then ruff and pytest. Extra arguments go to pytest.
set -e
cd "$(dirname "$0")"
sh scripts/setup_venv.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
