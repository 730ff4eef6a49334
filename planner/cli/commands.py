"""The ``mpq`` command group and its entry point: every command is one library call plus printing
(the commands live in ``model``, ``planning``, ``gains`` and ``data``); errors become exit codes."""
from __future__ import annotations

import sys

import click

from planner.cli.data import evaluate, export, finetune, train
from planner.cli.gains import gains
from planner.cli.model import compare, cost, inspect, spec
from planner.cli.planning import frontier, plan, sweep
from planner.errors import MpqError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpq")
def main() -> None:
    """mpq: plan per-layer 2/4/8-bit precision for an integer accelerator."""


for _command in (inspect, spec, cost, compare, plan, frontier, gains, train, evaluate, finetune, export, sweep):
    main.add_command(_command)


def _one_line(text: object) -> str:
    from planner.userfiles import one_line

    return one_line(text)


def run(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and maps errors to exit codes: 2 for a user error (one line,
    ``mpq: error: ...``), 130 for Ctrl-C (``mpq: interrupted``), 1 for a bug (a traceback and a
    line asking for a report). Outputs are written atomically, so none of these leaves a
    partial file."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            with main.make_context("mpq", args) as ctx:
                main.invoke(ctx)
        except click.exceptions.Exit as e:
            return e.exit_code
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            return 0
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            command = ctx.command_path if ctx else "mpq"
            where = f"{command[4:]}: " if command.startswith("mpq ") else ""
            click.echo(f"mpq: error: {where}{_one_line(e.format_message())} (see {command} --help)", err=True)
            return 2
        except click.exceptions.Abort:
            raise KeyboardInterrupt from None
    except MpqError as e:
        click.echo(f"mpq: error: {_one_line(e)}", err=True)
        return 2
    except KeyboardInterrupt:
        _interrupted()
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        import traceback

        traceback.print_exc()
        click.echo("mpq: internal error (a bug in mpq, not in your input); please report it with the command "
                   "and the traceback above", err=True)
        return 1
    return 0


def _interrupted() -> None:
    """Say ``mpq: interrupted`` once on stderr, ignoring a second Ctrl-C while doing so; the
    handler is restored afterwards, so an in-process caller of :func:`run` keeps its Ctrl-C
    (``python -m planner`` ignores it from there to its exit)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write("mpq: interrupted\n")
        sys.stderr.flush()
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(run())
