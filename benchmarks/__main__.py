"""Run every benchmark: ``python -m benchmarks [--scale S] [names...]``; one line per measurement."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import benchmarks


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full size (default 1.0)")
    parser.add_argument("names", nargs="*", help="only these benchmark modules (e.g. flatten)")
    args = parser.parse_args()
    modules = sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.name.startswith("bench_"))
    if args.names:
        modules = [m for m in modules if m.removeprefix("bench_") in args.names]
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        for measurement in module.run(args.scale):
            print(measurement.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
