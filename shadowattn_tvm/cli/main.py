"""The `shadowattn` console script: argument parsing only; library functions do the work."""
from __future__ import annotations

import argparse
import sys

from . import compile as compile_command
from . import calibrate, demo, deploy, emulated_phone, generate, tune
from . import eval as eval_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowattn", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (demo, calibrate, compile_command, deploy, emulated_phone, eval_command, generate, tune):
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return int(args.run(args) or 0)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        raise SystemExit(f"shadowattn {args.command}: interrupted") from None
    except SystemExit as err:  # the subcommands' own one-line messages; name the command once
        if isinstance(err.code, str) and not err.code.startswith("shadowattn"):
            raise SystemExit(f"shadowattn {args.command}: error: {err.code}") from None
        raise
    except Exception as err:  # noqa: BLE001 - any other failure is one line, the traceback is behind --debug
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SystemExit(f"shadowattn {args.command}: error: {message} (--debug shows the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
