"""The ``epalm`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from epalm import __version__


def _info(_: argparse.Namespace) -> int:
    from epalm import available_perceivers
    from epalm.injection import known_architectures

    print(f"epalm {__version__}")
    print(f"perceivers:       {', '.join(available_perceivers())}")
    print(f"LM architectures: {', '.join(known_architectures())}")
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


def _data_list(_: argparse.Namespace) -> int:
    from epalm.data.converters import available_converters
    from epalm.data.embedded import EMBEDDED

    print(f"embedded (built on first use, no --root): {', '.join(sorted(EMBEDDED))}")
    print(f"converters (official annotations under --root): {', '.join(available_converters())}")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from epalm.data.converters import ConverterError, available_converters, prepare
    from epalm.data.embedded import EMBEDDED, build_embedded

    if args.name in EMBEDDED:
        print(build_embedded(args.name, seed=args.seed, cache_dir=args.cache_dir, size=args.size))
        return 0
    if args.name not in available_converters():
        known = ", ".join(sorted([*EMBEDDED, *available_converters()]))
        print(f"epalm data prepare: unknown dataset {args.name!r}; known: {known}", file=sys.stderr)
        return 2
    if args.root is None:
        print(
            f"epalm data prepare {args.name}: --root DIR (the official files) is required",
            file=sys.stderr,
        )
        return 2
    out = None if args.out is None else Path(args.out)
    try:
        paths = prepare(
            args.name,
            Path(args.root),
            out,
            check_media=args.check_media,
            media_pattern=args.media_pattern,
        )
    except ConverterError as err:
        print(f"epalm data prepare: {err}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from epalm.data.check import check

    report = check(args.root, args.split)
    print("\n".join(report.lines))
    for title, items in (("warnings", report.warnings), ("problems", report.problems)):
        if items:
            print(f"{title}:")
            print("\n".join(item if item.startswith("  ") else f"- {item}" for item in items))
    print(f"{args.root}: {'OK' if report.ok else 'NOT USABLE as it is'}")
    return 0 if report.ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epalm", description="Give a frozen LM perception (eP-ALM)."
    )
    parser.add_argument("--version", action="version", version=f"epalm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "info", help="list the registered perceivers and LM architectures"
    ).set_defaults(run=_info)
    for name, purpose in JOBS.items():
        commands.add_parser(name, help=f"{purpose} (Hydra overrides; see `epalm {name} --help`)")

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
    data = commands.add_parser("data", help="datasets: embedded ones and converters of public ones")
    data_actions = data.add_subparsers(dest="action", required=True)
    data_actions.add_parser("list", help="the embedded datasets and the converters").set_defaults(
        run=_data_list
    )
    prepare = data_actions.add_parser(
        "prepare",
        help="build an embedded dataset, or turn a public one's official files into manifests",
    )
    prepare.add_argument("name", help="an embedded dataset or a converter (see `epalm data list`)")
    prepare.add_argument("--root", help="converters: the directory holding the official files")
    prepare.add_argument("--out", help="converters: where to write the manifests (default: --root)")
    prepare.add_argument(
        "--check-media",
        action="store_true",
        help="converters: fail when media files are missing, listing them all in "
        "OUT/missing_media.txt (without it: a warning counts them)",
    )
    prepare.add_argument(
        "--media-pattern", help="converters: where media lie under --root (a str.format pattern)"
    )
    prepare.add_argument("--seed", type=int, default=0, help="embedded: the generator's seed")
    prepare.add_argument("--size", default="default", help="embedded: 'default' or 'tiny'")
    prepare.set_defaults(run=_data_prepare)
    checking = data_actions.add_parser(
        "check",
        help="look over a directory of manifests: every line, media, answers, blind prior, "
        "leakage across splits",
    )
    checking.add_argument("root", help="the manifests' directory")
    checking.add_argument(
        "--split",
        action="append",
        help="a split to check, its file SPLIT.jsonl (repeatable; default: every *.jsonl)",
    )
    checking.set_defaults(run=_data_check)

    for sub in (listing, fetch, prepare):
        sub.add_argument(
            "--cache-dir",
            default=None,
            help="epalm's cache (default: $EPALM_CACHE or ~/.cache/epalm)",
        )
    return parser


JOBS = {
    "train": "train a connector, then score it with and without perception",
    "eval": "score a trained model on a split, and blind",
    "predict": "caption or answer questions about files",
    "retrieve": "search media by text and text by media with a retrieval model",
    "cache": "compute the frozen encoder's features once",
    "demo": "serve trained models in a web page (Gradio)",
}


def _job(command: str, overrides: list[str]) -> int:
    """A Hydra-configured job: compose, check, run; known failures end in one clear line."""
    from epalm.data.dataset import BadSampleError
    from epalm.data.feature_cache import NotCachedError
    from epalm.data.manifest import ManifestError
    from epalm.data.media import MediaError
    from epalm.errors import MissingFileError
    from epalm.training import jobs
    from epalm.training.compose import ComposeError, help_text, settings
    from epalm.training.settings import SettingsError
    from epalm.training.trainer import NonFiniteLossError
    from epalm.zoo import ModelNotFoundError

    clear_failures = (
        ComposeError,
        SettingsError,
        MissingFileError,
        ManifestError,
        BadSampleError,
        MediaError,
        NotCachedError,
        ModelNotFoundError,
        NonFiniteLossError,
    )

    if {"-h", "--help"} & set(overrides):
        print(help_text(command))
        return 0
    try:
        run_settings, resolved = settings(overrides)
        getattr(jobs, "evaluate" if command == "eval" else command)(run_settings, resolved)
    except clear_failures as err:
        print(f"epalm {command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"epalm {command}: interrupted; `resume=auto` continues a run", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in JOBS:
        return _job(argv[0], argv[1:])
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
