"""``python -m planner`` and the ``mpq`` command: the command line. A Ctrl-C while its modules
still import is answered like one during a run: one line, exit code 130."""
import sys


def main() -> None:
    """Run the CLI and exit with its code."""
    try:
        from planner.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("mpq: interrupted\n")
        sys.exit(130)
    code = run()
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: a late Ctrl-C must not kill the exit
    sys.exit(code)


if __name__ == "__main__":
    main()
