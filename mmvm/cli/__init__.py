"""The ``mmvm`` command line: ``mmvm data|train|evaluate|encode|plot|report|run|site
... --help``.

Each command group lives in its own module exposing ``register(subparsers)``, which
adds its parser(s) and sets ``func`` to a callable ``(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mmvm.config import ConfigError

COMMAND_MODULES = ("data", "train", "evaluate", "compare", "encode", "plot", "report", "run",
                   "site")
# What `mmvm train` and `mmvm evaluate` read without --config: the main job's experiment,
# the one `mmvm run` trains (pyproject.toml [tool.flwr.app.config] config), so that the
# centralized reference of a default federated run is the default centralized run.
MAIN_JOB_CONFIG = "configs/polymnist_cpu.toml"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone: ``mmvm run --help``,
    ``mmvm data check`` and the like then start without importing torch (~2 s of
    CPU); a command that needs torch (train, and ``run``'s and ``site check``'s
    checks) imports it when it runs."""
    parser = argparse.ArgumentParser(
        prog="mmvm",
        description="MMVM VAE: multimodal representation learning, centralized or "
        "federated (`mmvm run`: the federated app, as `flwr run .` runs it).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (command,) if command in COMMAND_MODULES else COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mmvm.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"mmvm.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def innermost(parser: argparse.ArgumentParser, argv: Sequence[str]
              ) -> argparse.ArgumentParser:
    """The (sub)parser of the command ``argv`` names, e.g. ``mmvm data make
    polymnist``'s."""
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and word in subs[0].choices:
            parser = subs[0].choices[word]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: its exit status; errors it expects (bad config, data, files)
    and, as a last resort, any OSError are one line and exit 2; Ctrl-C exits 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args, extra = parser.parse_known_args(argv)
    if extra:  # said with the usage of the command given, not of `mmvm`
        innermost(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except expected_errors() as err:
        print(f"mmvm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the command could not use
        print(f"mmvm {args.command}: error: {os_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmvm {args.command}: interrupted", file=sys.stderr)
        return 130


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports in one line: a bad config or value, and a diverged
    training where the command imported training (``mmvm run`` does not)."""
    training = sys.modules.get("mmvm.training")
    return (ConfigError, ValueError) + ((training.TrainingDivergedError,) if training
                                        else ())


def os_error_text(err: OSError) -> str:
    """``Is a directory: runs/x/eval.json``: what went wrong and on which path (the
    message alone when the error names none, e.g. our own FileNotFoundError)."""
    if err.filename is None:
        return str(err)
    where = str(err.filename) if err.filename2 is None \
        else f"{err.filename} -> {err.filename2}"
    return f"{err.strerror or type(err).__name__}: {where}"


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--config FILE`` and repeatable ``--set section.key=value`` overrides."""
    parser.add_argument("--config", default=default,
                        help="experiment TOML" + (f" (default: {default})" if default else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 "
                        "(repeatable)")


def console():
    """A rich console for tables: a terminal's width, or in a pipe or log none that
    wraps (rich assumes 80 columns there and breaks paths mid-name)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=10_000)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
