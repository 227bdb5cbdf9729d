"""How long `byol --help` and every `byol COMMAND --help` take, as a user waits for them (issue 52).

    .venv/bin/python benchmarks/cli_help.py [--repeats 5]

Each is a fresh process (`.venv/bin/byol ARGS --help`, the console script a user runs), timed from start to exit;
the table gives the median and the slowest of the repeats, and the modules the parser imports (none heavy:
tests/test_cli.py checks that building every parser imports no torch, numpy, matplotlib, Pillow or tracker).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from byol.cli import build_parser


def commands() -> list[list[str]]:
    """[], then each subcommand, and each sub-subcommand (bench step, ...), read off the parser itself."""
    found: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    script = shutil.which("byol") or str(Path(sys.executable).with_name("byol"))
    print(f"{'command':<28}{'median s':>10}{'slowest s':>11}")
    slowest = 0.0
    for command in commands():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([script, *command, "--help"], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        slowest = max(slowest, max(times))
        print(f"{' '.join(['byol', *command, '--help']):<28}{statistics.median(times):>10.3f}{max(times):>11.3f}")
    print(f"slowest of all: {slowest:.3f} s")


if __name__ == "__main__":
    main()
