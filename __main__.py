"""Command line: ``python -m wan_express {demo,convert,inspect} ...``.

Each subcommand lives in the module that does the work and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches.
"""

import argparse
import importlib
import logging
import sys

from .errors import WanExpressError

# subcommand -> (module, help)
COMMANDS = {
    "demo": (".demo", "write a tiny random Wan model in the official layout, load it and run it"),
    "convert": (".loaders.export.convert", "merge LoRAs into a DiT and export a LightX2V bf16/fp8/int8 or ComfyUI scaled-FP8 file"),
    "inspect": (".loaders.inspector", "describe a DiT file or folder: layout, precision, quantization, components"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan_express", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        modules[name] = importlib.import_module(module_name, __package__)
        modules[name].add_arguments(commands.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return modules[args.command].run(args)
    except WanExpressError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
