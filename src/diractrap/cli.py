"""The ``diractrap`` command: thin wrappers over library functions.

Each sub-command is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args)``; add new ones to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


COMMANDS: list = []  # functions that add one sub-command each (filled below)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diractrap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as err:  # user errors: one line, no traceback
        print(f"diractrap {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
