"""The ``epalm`` command line."""

from __future__ import annotations

import argparse
import sys

from epalm import __version__, available_perceivers
from epalm.injection import known_architectures


def _info(_: argparse.Namespace) -> int:
    print(f"epalm {__version__}")
    print(f"perceivers:       {', '.join(available_perceivers())}")
    print(f"LM architectures: {', '.join(known_architectures())}")
    return 0


def _train(_: argparse.Namespace) -> int:
    print(
        "epalm train: training jobs (Hydra configs, accelerate, embedded datasets) are not part of this "
        "release yet. Build a model in Python meanwhile: see the README's 'Python API' section."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="epalm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"epalm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "info", help="list the registered perceivers and LM architectures"
    ).set_defaults(run=_info)
    commands.add_parser(
        "train", help="train a connector (coming with the training release)"
    ).set_defaults(run=_train)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
