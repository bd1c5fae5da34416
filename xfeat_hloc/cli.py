"""The ``xfeat-hloc`` command line.

Each subcommand lives in the module that does the work: the module defines
``add_arguments(parser)`` and ``run_cli(args) -> int | None``. This file only maps
command names to modules, so a newcomer finds a command's code by its module name.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import UserError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("xfeat_hloc.extract_features", "extract local features into an h5"),
    "pairs": ("xfeat_hloc.pairs_cli", "write a pairs file (exhaustive, ...)"),
    "match": ("xfeat_hloc.match_features", "match local features of image pairs"),
    "match-dense": ("xfeat_hloc.match_dense", "dense matching (XFeat*, LoFTR)"),
    "reconstruct": (
        "xfeat_hloc.pipelines.reconstruction",
        "photo collection -> COLMAP model",
    ),
    "demo": ("xfeat_hloc.pipelines.demo", "reconstruct an embedded synthetic scene"),
    "aachen": ("xfeat_hloc.pipelines.aachen", "Aachen day-night localization"),
    "validate-results": (
        "xfeat_hloc.pipelines.aachen",
        "check a localization results file",
    ),
}


def add_device_and_weights(
    parser: argparse.ArgumentParser,
    weights_help: str = "explicit weights file (conf weights_path)",
) -> None:
    """The ``--device`` and ``--weights`` options every model-running command has."""
    parser.add_argument("--device", help="cuda, cuda:1, mps, cpu (default: auto)")
    parser.add_argument("--weights", type=Path, help=weights_help)


def _build_parser(only: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfeat-hloc",
        description="XFeat, XFeat*, LighterGlue and LoFTR for SfM and localization.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # command not available in this version
        adder = getattr(module, f"add_arguments_{name.replace('-', '_')}", None)
        (adder or module.add_arguments)(sub_parser)
        runner = getattr(module, f"run_cli_{name.replace('-', '_')}", None)
        sub_parser.set_defaults(_run=runner or module.run_cli)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = _build_parser(command)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        code = args._run(args)
    except UserError as error:
        print(f"xfeat-hloc {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"xfeat-hloc {args.command}: interrupted; rerun the same command to "
            "resume, finished work is kept.",
            file=sys.stderr,
        )
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
