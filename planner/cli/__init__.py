"""The ``mpq`` command line: parse the arguments, call one library function per command, print.

``commands`` holds the click commands; ``tables`` formats text tables and SI numbers; ``plots``
draws the PNGs. Nothing here is needed to script mpq from Python.
"""
from planner.cli.commands import main, run

__all__ = ["main", "run"]
