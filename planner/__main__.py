"""``python -m planner``: the mpq command line. A Ctrl-C while the CLI's modules still import
is answered like one during a run: one line, exit code 130."""
import sys

try:
    from .cli import run
except KeyboardInterrupt:
    sys.stderr.write("mpq: interrupted\n")
    sys.exit(130)

sys.exit(run())
