"""``python -m simulator [--host H] [--port P] [--seed FILE]``: the simulator without the wxkf CLI."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from simulator import SeedError, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--seed", type=Path, default=None, help="initial state (JSON, see docs/simulator.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.host, args.port, args.seed)
    except SeedError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
