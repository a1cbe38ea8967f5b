"""The `shadowattn` console script: argument parsing only; library functions do the work."""
from __future__ import annotations

import argparse
import sys

from . import compile as compile_command
from . import calibrate, demo, deploy, emulated_phone, tune
from . import eval as eval_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadowattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (demo, calibrate, compile_command, deploy, emulated_phone, eval_command, tune):
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
