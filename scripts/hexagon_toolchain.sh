#!/usr/bin/env bash
# Install what the Hexagon emulated checks need, ahead of time (the tests also do it on first use):
# Debian qemu-user (qemu-hexagon) and lld via apt-get (needs root), PyPI ziglang into
# $SHADOWATTN_CACHE/hexagon (never into the environment), then compile the qemu driver.
# Cold: ~2-3 min (zig builds its musl for Hexagon once) and ~450 MB under the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m shadowattn_tvm.emulators.hexagon install "$@"
