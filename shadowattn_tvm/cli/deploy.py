"""`shadowattn deploy DIR (--rpc-tracker HOST:PORT [--rpc-key KEY] | --rpc HOST:PORT)`."""
from __future__ import annotations

import json
import sys

EXIT_UNAVAILABLE = 3  # no session: tracker/server unreachable, unknown key, no free device
EXIT_FAILED = 4  # the session broke mid-way, or the output did not match the host build


def add_parser(sub) -> None:
    from .. import settings

    p = sub.add_parser("deploy", help="run a build on a device over TVM RPC, verify it, time it",
                       description="Upload DIR/cpu.so to a device (through a tracker, or a server directly), run the "
                                   "prefill on the build's reference inputs, compare with its reference output (and, for an NPU "
                                   "build, count the NPU launches against plan.json), and report "
                                   "time_evaluator latency (labelled when the server is emulated). Exit codes: 0 ok, "
                                   f"1 bad build or arguments, {EXIT_UNAVAILABLE} no device, {EXIT_FAILED} run failed "
                                   "or did not verify.",
                       epilog=f"Without --rpc/--rpc-tracker the tracker is ${settings.TRACKER_HOST.name}:"
                              f"${settings.TRACKER_PORT.name} (default 127.0.0.1:9190).")
    p.add_argument("build", metavar="DIR", help="build directory written by `shadowattn compile`")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rpc-tracker", metavar="HOST:PORT", help="RPC tracker to request a device from")
    where.add_argument("--rpc", metavar="HOST:PORT", help="RPC server to connect to directly")
    p.add_argument("--rpc-key", metavar="KEY", help="device key at the tracker (default: the build's device rpc_key)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a free device (default 60)")
    p.add_argument("--repeat", type=int, default=3, help="time_evaluator repeats (default 3)")
    p.add_argument("--number", type=int, default=1, help="runs per repeat (default 1)")
    p.add_argument("--trace", metavar="FILE", help="Chrome trace of an NPU build's run (default DIR/trace-<server>.json)")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance vs the reference output (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance vs the reference output (default 1e-4)")
    p.add_argument("--model", metavar="FILE", help="the model file the build's weights come from, if it moved since "
                                                   "the build (its sha256 is checked)")
    p.add_argument("--generate", action="store_true", help="a generation build: after the verified reference "
                                                          "run, generate from --prompt and stream it")
    p.add_argument("--prompt", help="--generate: the prompt (encoded with the build's tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="--generate: tokens to generate at most (default 32)")
    p.add_argument("--chat", action="store_true", help="--generate: apply the model's chat template")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(run=run)


def _endpoint(args, manifest):
    from .. import settings
    from ..runtime.rpc_session import Endpoint, parse_address

    if args.rpc:
        if args.rpc_key:
            raise ValueError("--rpc-key goes with --rpc-tracker, not --rpc")
        return Endpoint(*parse_address(args.rpc, "--rpc"))
    if args.rpc_tracker:
        host, port = parse_address(args.rpc_tracker, "--rpc-tracker")
    else:
        host, port = settings.TRACKER_HOST.get(), settings.TRACKER_PORT.get()
    return Endpoint(host, port, args.rpc_key or manifest.rpc_key)


def _request(args):
    if not args.generate:
        if args.prompt is not None or args.chat:
            raise SystemExit("shadowattn deploy: error: --prompt and --chat go with --generate")
        return None
    if not args.prompt:
        raise SystemExit("shadowattn deploy: error: --generate needs --prompt TEXT")
    if args.max_new_tokens < 1:
        raise SystemExit("shadowattn deploy: error: --max-new-tokens must be >= 1")
    from ..runtime.deploy_generation import Request

    def show(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    return Request(args.prompt, args.max_new_tokens, args.chat, on_text=show)


def run(args) -> int:
    from ..builder.manifest import ManifestError
    from ..builder.manifest import load as load_manifest
    from ..runtime.deploy import DeployError, Tolerance, deploy
    from ..runtime.rpc_session import RPCUnavailable
    from ._checks import non_negative, writable_file

    if args.repeat < 1 or args.number < 1:
        raise SystemExit("shadowattn deploy: error: --repeat and --number must be >= 1")
    non_negative("--atol", args.atol)
    non_negative("--rtol", args.rtol)
    writable_file("--json", args.json, args.build, args.model)
    writable_file("--trace", args.trace, args.build, args.model)
    request = _request(args)
    try:
        endpoint = _endpoint(args, load_manifest(args.build))
        result = deploy(args.build, endpoint, number=args.number, repeat=args.repeat, wait=args.wait,
                        tolerance=Tolerance(atol=args.atol, rtol=args.rtol), trace=args.trace,
                        model_file=args.model, generate=request)
    except (ManifestError, ValueError) as err:
        raise SystemExit(f"shadowattn deploy: error: {err}") from None
    except RPCUnavailable as err:
        print(f"shadowattn deploy: error: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DeployError as err:
        print(f"shadowattn deploy: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.generate:
        print()
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_json(), f, indent=1)
    if result.npu_launches is not None and result.npu_launches != result.npu_planned:
        print(f"shadowattn deploy: error: {result.npu_launches} NPU launches ran, plan.json has {result.npu_planned}",
              file=sys.stderr)
        return EXIT_FAILED
    if not result.verified:
        print(f"shadowattn deploy: error: output differs from the build's reference (max abs "
              f"{result.max_abs_err:.3g})", file=sys.stderr)
        return EXIT_FAILED
    return 0
