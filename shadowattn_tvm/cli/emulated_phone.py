"""`shadowattn emulated-phone {setup,start,stop,status}`: the aarch64 RPC server under qemu-user."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    from .. import settings

    p = sub.add_parser("emulated-phone", help="prepare, start, stop the emulated ARM64 phone (RPC tracker + server)",
                       description="An aarch64 TVM RPC server under qemu-user, registered with a TVM RPC tracker on "
                                   "127.0.0.1. `setup` installs qemu-user/g++-aarch64-linux-gnu (apt) and caches an "
                                   f"aarch64 Python + TVM runtime under ${settings.CACHE_DIR.name}/emulated-phone; "
                                   f"`start` runs the pair and writes ${settings.PHONE_STATE.name}; `stop` kills their "
                                   "process groups. Timings from it are emulation timings, not a phone's.")
    actions = p.add_subparsers(dest="action", required=True)
    setup = actions.add_parser("setup", help="install and cache what the emulated phone needs")
    setup.add_argument("--force", action="store_true", help="rebuild the cached image")
    start = actions.add_parser("start", help="start the tracker and the emulated server")
    start.add_argument("--key", help="device key to register (default snapdragon-8gen3; host with --host-server)")
    start.add_argument("--tracker-port", type=int,
                       help=f"tracker port (default ${settings.TRACKER_PORT.name} or 9190; 0 = any free port)")
    start.add_argument("--server-port", type=int, default=0, help="server port (default: any free port)")
    start.add_argument("--host-server", action="store_true",
                       help="run an x86 server on this machine instead (for host builds; no qemu)")
    actions.add_parser("stop", help="stop the tracker and server of the state file")
    actions.add_parser("status", help="print what runs, as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import settings
    from ..emulators import phone as emulated_phone, phone_image
    from ..emulators.toolchain import ToolchainError, ensure_tools

    try:
        if args.action == "setup":
            ensure_tools(("qemu-aarch64", "aarch64-gxx"))
            image = phone_image.prepare(force=args.force)
            print(f"emulated phone image ready: {image.root}")
        elif args.action == "start":
            kind = emulated_phone.ServerKind.HOST if args.host_server else emulated_phone.ServerKind.EMULATED
            key = args.key or ("host" if args.host_server else "snapdragon-8gen3")
            tracker_port = settings.TRACKER_PORT.get() if args.tracker_port is None else args.tracker_port
            state = emulated_phone.start(key, kind=kind, tracker_port=tracker_port, server_port=args.server_port)
            print(f"tracker {state.tracker_address} (pid {state.tracker.pid}), server pid {state.server.pid}, "
                  f"key {state.key!r}\ndeploy with: shadowattn deploy DIR --rpc-tracker {state.tracker_address} "
                  f"--rpc-key {state.key}")
        elif args.action == "stop":
            emulated_phone.stop()
        else:
            print(json.dumps(emulated_phone.status(), indent=1))
    except (ValueError, emulated_phone.PhoneError, phone_image.PhoneImageError, ToolchainError) as err:
        raise SystemExit(f"shadowattn emulated-phone {args.action}: error: {err}") from None
    return 0
