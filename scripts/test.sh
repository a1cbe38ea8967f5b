#!/usr/bin/env bash
# The README's test command: install the package with its test extra, then run the whole suite.
# Extra pytest arguments pass through, e.g. `bash scripts/test.sh -m "not slow and not emulated"`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e '.[test]'
python -m pytest "$@"
