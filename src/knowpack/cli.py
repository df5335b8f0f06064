"""The knowpack command line: the only module that prints for humans.

    knowpack --help
    knowpack world build --out DIR
    knowpack facts check FILE

User mistakes (KnowpackError) print one clear message and exit 2 without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from knowpack import __version__
from knowpack.errors import KnowpackError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knowpack",
        description="Pack new facts into a language model (LoRA, LoKI) and measure what was learned and damaged.",
    )
    parser.add_argument("--version", action="version", version=f"knowpack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KnowpackError as exc:
        print(f"knowpack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("knowpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
