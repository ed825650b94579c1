"""bench/gpu.sh's results: bundled on the GPU machine, taken apart here.

On the GPU machine every section's JSON goes into one bundle, beside the rendered page and the
log, so that a few files bring everything back:

    python bench/gpu_collect.py bundle WORK OUT   # there: OUT/gpu-results.json, OUT/benchmarks.md
    python bench/gpu_collect.py import BUNDLE     # here: bench/results/*.json, docs/benchmarks.md

`bundle` also turns the sections' times (WORK/sections.jsonl) and nvidia-smi's samples
(OUT/nvidia-smi.csv) into the "GPU use by section" result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report

RESULTS, DOC = ROOT / "bench" / "results", ROOT / "docs" / "benchmarks.md"
BUNDLE = "gpu-results.json"


def gpu_samples(path: Path) -> list[tuple[float, float, float]]:
    """(epoch seconds, utilisation %, memory used MiB) from nvidia-smi's CSV (no header/units)."""
    samples = []
    if not path.exists():
        return samples
    for line in path.read_text().splitlines():
        try:
            stamp, utilisation, memory = (cell.strip() for cell in line.split(","))
            when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local, as date
            samples.append((when, float(utilisation), float(memory)))
        except ValueError:  # a line cut short when the sampler was stopped
            continue
    return samples


def gpu_use(sections: list[dict], samples: list[tuple[float, float, float]], environment) -> dict:
    rows = []
    for s in sections:
        inside = [(u, m) for t, u, m in samples if s["start"] <= t <= s["end"]]
        if "skipped" in s:
            ended = f"skipped: {s['skipped']}"
        else:
            ended = {0: "ok", 124: "timed out", 137: "timed out"}.get(s["exit"], "failed")
        rows.append({
            "section": s["section"], "seconds": s["end"] - s["start"],
            "box_seconds": s["box_seconds"], "exit": s["exit"], "ended": ended,
            "utilisation_mean": statistics.mean(u for u, _ in inside) if inside else None,
            "utilisation_max": max(u for u, _ in inside) if inside else None,
            "memory_used_max": max(m for _, m in inside) if inside else None,
        })  # fmt: skip
    return {"mode": "gpu_use", "environment": environment, "sections": rows}


def bundle(work: Path, out: Path) -> Path:
    """Everything this run measured in one JSON, and the page rendered with it."""
    new = {p.stem: json.loads(p.read_text()) for p in sorted((work / "new").glob("*.json"))}
    sections = [json.loads(line) for line in (work / "sections.jsonl").read_text().splitlines()]
    if new:
        environment = next(iter(new.values()))["environment"]
        use = gpu_use(sections, gpu_samples(out / "nvidia-smi.csv"), environment)
        new[report.results_name("gpu_use", environment["device"], False)] = use
    merged = work / "all"
    merged.mkdir(exist_ok=True)
    for path in RESULTS.glob("*.json"):  # the figures already on the page stay on it
        shutil.copy(path, merged / path.name)
    for name, result in new.items():
        report.write_json(merged / f"{name}.json", result)
    page = out / "benchmarks.md"
    shutil.copy(DOC, page)
    report.write_doc(page, merged)
    path = out / BUNDLE
    report.write_json(path, {"sections": sections, "results": new})
    return path


def take_apart(path: Path, results: Path = RESULTS, doc: Path = DOC) -> list[str]:
    """The bundle's results into bench/results/, and docs/benchmarks.md rendered again."""
    found = json.loads(path.read_text())["results"]
    for name, result in found.items():
        report.write_json(results / f"{name}.json", result)
    report.write_doc(doc, results)
    return sorted(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    make = commands.add_parser("bundle")
    make.add_argument("work", type=Path)
    make.add_argument("out", type=Path)
    take = commands.add_parser("import")
    take.add_argument("bundle", type=Path)
    args = p.parse_args()
    if args.command == "bundle":
        print(f"wrote {bundle(args.work, args.out)}")
    else:
        print(f"imported {', '.join(take_apart(args.bundle))}; rendered {DOC}")


if __name__ == "__main__":
    main()
