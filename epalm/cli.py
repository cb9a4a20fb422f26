"""The ``epalm`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from epalm import __version__


def _info(_: argparse.Namespace) -> int:
    from epalm import available_perceivers
    from epalm.injection import known_architectures

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


def _models_list(args: argparse.Namespace) -> int:
    from epalm.zoo.listing import format_table, known_models

    print(format_table(known_models(args.cache_dir)))
    return 0


def _models_fetch(args: argparse.Namespace) -> int:
    from epalm.zoo import ModelNotFoundError, resolve

    try:
        print(resolve(args.name, cache_dir=args.cache_dir))
    except ModelNotFoundError as err:
        print(f"epalm models fetch: {err}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epalm", description="Give a frozen LM perception (eP-ALM)."
    )
    parser.add_argument("--version", action="version", version=f"epalm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "info", help="list the registered perceivers and LM architectures"
    ).set_defaults(run=_info)
    commands.add_parser(
        "train", help="train a connector (coming with the training release)"
    ).set_defaults(run=_train)

    models = commands.add_parser("models", help="list or fetch frozen models").add_subparsers(
        dest="action", required=True
    )
    listing = models.add_parser(
        "list", help="every known name, its sources, and whether it is cached"
    )
    listing.set_defaults(run=_models_list)
    fetch = models.add_parser(
        "fetch", help="resolve a name now (download / convert) and print its directory"
    )
    fetch.add_argument(
        "name", help="hub id, local directory or offline name (see `epalm models list`)"
    )
    fetch.set_defaults(run=_models_fetch)
    for sub in (listing, fetch):
        sub.add_argument(
            "--cache-dir",
            default=None,
            help="epalm's cache (default: $EPALM_CACHE or ~/.cache/epalm)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
