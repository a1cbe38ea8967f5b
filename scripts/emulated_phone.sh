#!/usr/bin/env bash
# The emulated ARM64 phone: a TVM RPC tracker on 127.0.0.1 and an aarch64 TVM RPC server under qemu-user.
#
#   bash scripts/emulated_phone.sh setup            # apt: qemu-user g++-aarch64-linux-gnu; cache the aarch64 userland
#   bash scripts/emulated_phone.sh start [--key K] [--tracker-port P]   # prints PIDs, writes the state file
#   bash scripts/emulated_phone.sh status | stop    # stop kills the two process groups recorded in the state file
#
# Cache: $SHADOWATTN_CACHE/emulated-phone (default ~/.cache/shadowattn); state: $SHADOWATTN_PHONE_STATE.
# Cold setup downloads ~120 MB (arm64 debs + aarch64 wheels) and takes ~30 s plus the apt install;
# a warm start takes ~15 s. The same commands: `shadowattn emulated-phone ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m shadowattn_tvm.cli.main emulated-phone "$@"
