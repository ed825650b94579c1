"""Benchmark the command line's start-up: `cifar-mlflow --help` and each `<command> --help`, in a
fresh interpreter each, here and (with --baseline) in another checkout with its own venv, in
the same run, alternating, so both see the same machine.

    .venv/bin/python bench/bench_cli.py
    .venv/bin/python bench/bench_cli.py --baseline /path/to/an/older/checkout

For each command: the median wall time over --rounds, the time `python -X importtime` gives the
import of `cifar_mlflow.cli` (cumulative), and which heavy libraries a `--help` imports. Writes
docs/cli-benchmark.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("", "train", "compare", "sweep", "export", "predict")
HEAVY = ("torch", "mlflow", "matplotlib", "sklearn", "pandas")
# What a --help run prints after it, so the modules it loaded can be read back.
LOADED = "import sys; print('LOADED', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))"


def help_code(command: str) -> str:
    args = [command, "--help"] if command else ["--help"]
    return (
        "import contextlib, io\nfrom cifar_mlflow.cli import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    cli({args!r}, prog_name='cifar-mlflow')\n{LOADED}"
    )


def run(python: str, checkout: Path, code: str, *flags: str) -> tuple[float, str, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [python, *flags, "-c", code], cwd=checkout, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(checkout)},
    )  # fmt: skip
    return time.perf_counter() - started, done.stdout, done.stderr


def import_seconds(python: str, checkout: Path) -> float:
    _, _, stderr = run(python, checkout, "import cifar_mlflow.cli", "-X", "importtime")
    [line] = [x for x in stderr.splitlines() if x.rstrip().endswith("| cifar_mlflow.cli")]
    return int(re.split(r"\s*\|\s*", line)[1]) / 1e6


def measure(trees: dict[str, tuple[str, Path]], rounds: int) -> dict:
    walls = {(t, c): [] for t in trees for c in COMMANDS}
    loaded = {}
    for _ in range(rounds):
        for command in COMMANDS:
            for name, (python, checkout) in trees.items():  # alternating: same load for both
                seconds, stdout, _ = run(python, checkout, help_code(command))
                walls[name, command].append(seconds)
                [line] = [x for x in stdout.splitlines() if x.startswith("LOADED ")]
                loaded[name, command] = sorted(set(line.split()[1:]) & set(HEAVY))
    imports = {name: import_seconds(*tree) for name, tree in trees.items()}
    return {"walls": walls, "loaded": loaded, "imports": imports}


def write_doc(trees: dict, results: dict, rounds: int) -> Path:
    load = os.getloadavg()[0]
    lines = [
        "# Command-line start-up", "",
        f"`bench/bench_cli.py`: each `--help` in a fresh interpreter, median of {rounds} rounds, "
        "the trees alternating within a round. Machine: "
        f"{os.cpu_count()} CPUs, 1-minute load average {load:.1f} at the end; Python "
        f"{sys.version.split()[0]}.", "",
        "| command | " + " | ".join(f"{t}: wall s | {t}: imports" for t in trees) + " |",
        "|---|" + "---|---|" * len(trees),
    ]  # fmt: skip
    for command in COMMANDS:
        cells = [f"`{' '.join(['cifar-mlflow', *([command] if command else []), '--help'])}`"]
        for tree in trees:
            loaded = results["loaded"][tree, command]
            cells.append(f"{statistics.median(results['walls'][tree, command]):.2f}")
            cells.append(", ".join(loaded) or "none of " + "/".join(HEAVY))
        lines.append("| " + " | ".join(cells) + " |")
    imports = "; ".join(f"{tree} {s:.3f} s" for tree, s in results["imports"].items())
    lines += ["", f"`python -X importtime -c 'import cifar_mlflow.cli'`, cumulative: {imports}."]
    doc = ROOT / "docs" / "cli-benchmark.md"
    doc.write_text("\n".join(lines) + "\n")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, with its .venv")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = {"this tree": (sys.executable, ROOT)}
    if args.baseline:
        trees["baseline"] = (str(args.baseline / ".venv" / "bin" / "python"), args.baseline)
    doc = write_doc(trees, measure(trees, args.rounds), args.rounds)
    print(doc.read_text())


if __name__ == "__main__":
    main()
