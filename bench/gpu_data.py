"""CIFAR-10 for a machine that has no copy of it: the GPU machine of bench/gpu.sh.

The JPEG files themselves travel with the working tree, packed into one uncompressed .npz under
data/ (ignored by git): 52.7 MiB of JPEG bytes, against 184 MB decoded
(compressing either gains little: JPEG data is already entropy-coded). On the machine they are
written back as the image folder `train/<class>/*.jpg`, `test/<class>/*.jpg`, which the project's
own loader decodes, so the figures include its real data path.

    python bench/gpu_data.py pack /work/shared/data/cifar10-jpeg data/cifar10-jpeg.npz  # here
    python bench/gpu_data.py unpack data/cifar10-jpeg.npz /tmp/cifar10-jpeg             # there
    python bench/gpu_data.py synthetic /tmp/cifar10-synthetic    # no pack: random images

Synthetic images are random uint8 arrays of CIFAR-10's shape and size (50,000 + 10,000, in
torchvision's batch files): right for throughput, meaningless for accuracy.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
SYNTHETIC_SIZES = {"train": 50_000, "test": 10_000}


def pack(source: Path, destination: Path) -> dict[str, int]:
    """Every split's JPEG bytes end to end, with offsets and labels, in file-name order."""
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split in SPLITS:
        paths = [(label, path) for label, name in enumerate(classes)
                 for path in sorted((source / split / name).iterdir())]  # fmt: skip
        blobs = [path.read_bytes() for _, path in paths]
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        arrays[f"{split}_labels"] = np.array([label for label, _ in paths], np.int16)
        arrays[f"{split}_suffixes"] = np.array([path.suffix for _, path in paths])
    destination.parent.mkdir(parents=True, exist_ok=True)
    np.savez(destination, **arrays)
    return {split: len(arrays[f"{split}_labels"]) for split in SPLITS}


def unpack(packed: Path, destination: Path) -> dict[str, int]:
    """The image folder again: `<split>/<class>/<index>.<suffix>`, in the packed order."""
    with np.load(packed) as stored:
        classes = [str(c) for c in stored["classes"]]
        counts = {}
        for split in SPLITS:
            data, offsets = stored[f"{split}_bytes"], stored[f"{split}_offsets"]
            labels, suffixes = stored[f"{split}_labels"], stored[f"{split}_suffixes"]
            for name in classes:
                (destination / split / name).mkdir(parents=True, exist_ok=True)
            for i, (label, suffix) in enumerate(zip(labels, suffixes)):
                path = destination / split / classes[label] / f"{i:05d}{suffix}"
                path.write_bytes(data[offsets[i] : offsets[i + 1]].tobytes())
            counts[split] = len(labels)
    return counts


def synthetic(destination: Path, sizes: dict[str, int] = SYNTHETIC_SIZES) -> dict[str, int]:
    """Random images in torchvision's layout: five train batches, a test batch, the meta file."""
    folder = destination / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]  # fmt: skip
    batches = {"test_batch": sizes["test"]}
    batches.update({f"data_batch_{i + 1}": sizes["train"] // 5 for i in range(5)})
    for name, count in batches.items():
        batch = {
            "data": rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8),
            "labels": [i % len(names) for i in range(count)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return dict(sizes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    for name, paths in (("pack", ("source", "destination")), ("unpack", ("packed", "destination")),
                        ("synthetic", ("destination",))):  # fmt: skip
        command = commands.add_parser(name)
        for path in paths:
            command.add_argument(path, type=Path)
    for split, count in SYNTHETIC_SIZES.items():  # smaller, for a quick check of the scripts
        commands.choices["synthetic"].add_argument(f"--{split}", type=int, default=count)
    args = p.parse_args()
    if args.command == "pack":
        counts = pack(args.source, args.destination)
    elif args.command == "unpack":
        counts = unpack(args.packed, args.destination)
    else:
        counts = synthetic(args.destination, {"train": args.train, "test": args.test})
    print(f"{args.command}: {counts} images -> {args.destination}")


if __name__ == "__main__":
    main()
