"""The operator CLI, ``python -m handlers COMMAND`` (docs/cli.md), on the function's own code.

Global options load the environment first (``--env-file``/``--local``, so the
Google clients find the emulators; Application Default Credentials otherwise),
then the config (``--config``, default the function's). Results go to stdout,
logs and progress to stderr. Every error is one line naming the thing and the
fix, with a non-zero exit code; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from handlers import config as config_module
from handlers import log
from handlers.cli import backfill, check_config, explain, export, failures, reconcile, retry, tail
from handlers.cli.context import Context
from handlers.cli.environment import LOCAL_ENV_FILE, load_env_file
from handlers.cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    closed_stdout_exit,
    describe,
)
from handlers.config import ConfigError

COMMANDS = (check_config, explain, backfill, reconcile, export, tail, failures, retry)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the whole usage by default)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m handlers",
                     description="Operator tools for the DICOM import function: check and explain the config, "
                                 "backfill a bucket, reconcile lost events, export a store, tail the results.")
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    for subparser in commands.choices.values():
        _global_options(subparser, suppress=True)  # also accepted after the command
    return parser


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--config, --env-file, --local; ``suppress`` keeps a command's parser from resetting the top level's."""
    unset = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--config", metavar="PATH", **unset,
                        help="config file (default: $DICOM_IMPORT_CONFIG, else config.yaml beside main.py)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--env-file", type=Path, metavar="PATH", **unset,
                        help="KEY=VALUE lines set in the environment first (they override it)")
    source.add_argument("--local", action="store_true", **unset,
                        help="use the local stack: --env-file .local/stack.env (written by make up)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.local and args.env_file:  # one before the command, one after it
            parser.error("argument --env-file: not allowed with argument --local")
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    log.redirect(err)
    env_loaded = False
    try:
        if args.local or args.env_file:
            load_env_file(LOCAL_ENV_FILE if args.local else args.env_file, local=args.local)
            env_loaded = True
        context = Context(args.config or config_module.default_path(), out, err)
        code = args.run(context, args)
        out.flush()  # here, not at exit: a reader gone (| head) is then caught below
        return code
    except CliError as exc:
        err.write(f"error: {exc}\n")
        return exc.code
    except ConfigError as exc:
        err.write("".join(f"{problem}\n" for problem in exc.problems))
        if not env_loaded and any("the environment does not set it" in problem for problem in exc.problems):
            err.write("hint: add --local to read .local/stack.env (the local stack), or export the variables\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        code = closed_stdout_exit(out)  # the reader of stdout stopped (`| head`)
        if code is None:  # a connection's, not stdout's
            err.write(f"error: {describe(exc)}\n")
            return EXIT_FAILURE
        return code
    except Exception as exc:  # noqa: BLE001 - the promise: one line, never a traceback
        err.write(f"error: {describe(exc)}\n")
        return EXIT_FAILURE
    finally:
        log.redirect(None)
