#!/bin/sh
# The whole test suite: sets up .venv when missing, then ruff and pytest. Extra arguments go to pytest.
set -e
cd "$(dirname "$0")"
sh scripts/setup_venv.sh
# The web UI's browser test drives Debian's Chromium; install it where we may (root with apt-get), else that
# one test is skipped. A CJK font, so that the screenshots show the Chinese examples.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "run_tests: installing chromium, chromium-driver and a CJK font for the browser test"
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei) >/dev/null 2>&1 \
        || echo "run_tests: could not install chromium; the browser test will be skipped"
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
