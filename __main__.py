"""Command line: ``python -m wan_express demo``."""

import argparse
import logging
import sys

from .errors import WanExpressError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_express", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="write a tiny random Wan model in the official layout, load it and run it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "demo":
            from .demo import run_demo
            print(run_demo())
    except WanExpressError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
