"""CIFAR-10 as uint8 arrays: from torchvision's files or from an image folder, decoded once.

Two layouts are accepted in `data_dir`:
  (a) torchvision's `cifar-10-batches-py/` (downloaded there by torchvision when the folder is
      missing or empty and the network allows), read straight from its pickled batches;
  (b) an image folder `train/<class>/*` and `test/<class>/*`, decoded once with Pillow and cached
      as one .npz (measured: decoding the 60,000 JPEGs takes ~20 s on 2 cores, loading the cache
      ~0.3 s).
Images are returned as (N, 3, 32, 32) uint8, labels as int64, so the engine can move a whole
split to the device in one copy. Either layout must hold exactly CIFAR-10's ten classes (names
matched without regard to case), and labels always follow CLASSES' order, whatever the order or
case of the folders or of `batches.meta`: a model trained here names its outputs CLASSES.
"""

from __future__ import annotations

import codecs
import contextlib
import difflib
import hashlib
import os
import pickle
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import CLASSES, held_out_images
from .errors import UserError
from .files import atomic_write

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TORCHVISION_FOLDER = "cifar-10-batches-py"
TORCHVISION_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TORCHVISION_TEST = ["test_batch"]
EXPECTED_LAYOUT = (
    f"expected {TORCHVISION_FOLDER}/ (torchvision's files) or train/<class>/*.jpg and "
    "test/<class>/*.jpg (an image folder)"
)


class DataError(UserError):
    """A data directory that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 3, 32, 32) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: np.ndarray) -> Split:
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    val: Split | None
    classes: tuple[str, ...]  # always CLASSES: labels are indices into it
    source: str  # "image-folder:<path>" or "torchvision:<path>"


def source_folder(source: str) -> str:
    """The folder a data source names ("image-folder:<path>" or "torchvision:<path>", as
    Cifar10.source and a run's `data_source` param hold it); "" for anything else."""
    kind, _, folder = source.partition(":")
    return folder if kind in ("image-folder", "torchvision") else ""


def as_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 RGB in [0, 1]: what a logged or exported model takes."""
    return images.astype(np.float32) / 255.0


def load_cifar10(
    data_dir: str | os.PathLike,
    train_limit: int = 0,
    test_limit: int = 0,
    val_size: float = 0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Cifar10:
    root = Path(data_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise DataError(f"data directory {root} is a file, not a folder: {EXPECTED_LAYOUT}")
    if (root / "train").is_dir() or (root / "test").is_dir():
        train, test = _read_image_folder(root, _cache_dir(cache_dir))
        source = f"image-folder:{root}"
    else:
        batches = _torchvision_folder(root)
        train, test = _read_torchvision(batches)
        source = f"torchvision:{batches}"
    train = first_per_class(train, train_limit, len(CLASSES))
    test = first_per_class(test, test_limit, len(CLASSES))
    train, val = split_validation(train, val_size, seed)
    return Cifar10(train, test, val, CLASSES, source)


def class_labels(names: Sequence[str], where: str, prefix: str = "") -> list[int]:
    """CIFAR-10's label (an index into CLASSES) of each of `names`, matched without regard to
    case; unless `names` are exactly CIFAR-10's ten classes, a DataError says which are extra,
    missing or misspelt (a close match by difflib), each shown as `prefix` + name."""
    by_name: dict[str, list[str]] = {}
    for name in names:
        by_name.setdefault(name.lower(), []).append(name)
    problems = [f"{' and '.join(prefix + n for n in sorted(given))} name the same class"
                for given in by_name.values() if len(given) > 1]  # fmt: skip
    unknown = [given[0] for key, given in by_name.items() if key not in CLASSES]
    missing = [c for c in CLASSES if c not in by_name]
    misspelt = {}
    for name in unknown:
        close = difflib.get_close_matches(name.lower(), missing, n=1)
        if close and close[0] not in misspelt.values():
            misspelt[name] = close[0]
    if problems or unknown or missing:
        extra = [n for n in unknown if n not in misspelt]
        missing = [c for c in missing if c not in misspelt.values()]
        problems += [f"{prefix}{n} misspelt? (CIFAR-10 has {c})" for n, c in misspelt.items()]
        problems += [f"extra {', '.join(prefix + n for n in extra)}"] if extra else []
        problems += [f"missing {', '.join(prefix + c for c in missing)}"] if missing else []
        raise DataError(
            f"{where} does not hold CIFAR-10's ten classes: {'; '.join(problems)} (the classes "
            f"are {', '.join(CLASSES)}, in any case)"
        )
    return [CLASSES.index(name.lower()) for name in names]


def first_per_class(split: Split, limit: int, num_classes: int) -> Split:
    """Keep `limit` images: the first limit//10 of each class in stored order, and one more for
    the first limit%10 classes, so the count is exactly `limit` (0 keeps everything)."""
    if limit <= 0 or limit >= len(split):
        return split
    keep = []
    for c in range(num_classes):
        quota = limit // num_classes + (1 if c < limit % num_classes else 0)
        keep.append(np.flatnonzero(split.labels == c)[:quota])
    return split.select(np.sort(np.concatenate(keep)))


def split_validation(train: Split, val_size: float, seed: int) -> tuple[Split, Split | None]:
    """Hold out `val_size` images (a count >= 1, or a fraction 0 < f < 1 of the training images),
    stratified by class and seeded; 0 holds out nothing. A fraction holds out at least one image
    per class, so that the default works on tiny data too (--train-limit 20: 10 of 20)."""
    if val_size <= 0:
        return train, None
    from sklearn.model_selection import train_test_split

    held_out = held_out_images(val_size, len(train))  # leaves at least one image per class
    try:
        keep, held = train_test_split(
            np.arange(len(train)), test_size=held_out, stratify=train.labels, random_state=seed
        )
    except ValueError as e:
        raise DataError(f"cannot hold out a stratified --val-size {val_size}: {e}") from None
    return train.select(np.sort(keep)), train.select(np.sort(held))


# --- torchvision's files -------------------------------------------------------------------


def _torchvision_folder(root: Path) -> Path:
    for candidate in (root / TORCHVISION_FOLDER, root):
        if (candidate / TORCHVISION_TEST[0]).exists():
            return candidate
    try:
        holds_something = root.exists() and any(root.iterdir())
    except OSError as e:
        raise DataError(
            f"cannot read data directory {root} ({e.strerror}): {EXPECTED_LAYOUT}"
        ) from None
    if holds_something:
        raise DataError(f"data directory {root} holds no CIFAR-10: {EXPECTED_LAYOUT}")
    _download(root)
    return root / TORCHVISION_FOLDER


def _download(root: Path) -> None:
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # urllib raises several types; all mean "no copy could be fetched"
        raise DataError(
            f"CIFAR-10 is not in {root} and downloading it failed ({type(e).__name__}: {e}); "
            f"point --data-dir at a local copy ({EXPECTED_LAYOUT})"
        ) from None


def _read_torchvision(folder: Path) -> tuple[Split, Split]:
    """The batches' labels index `batches.meta`'s label names (CLASSES when there is no meta
    file): mapped to CLASSES' order, so a meta file in another order still labels truly."""
    canonical = np.arange(len(CLASSES))
    meta = folder / "batches.meta"
    if meta.exists():
        names = _unpickle(meta).get("label_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"damaged CIFAR-10 file {meta}: no list of label names; re-download it")
        canonical = np.array(class_labels(names, str(meta)), dtype=np.int64)
    train = _concat([_read_batch(folder / name, canonical) for name in TORCHVISION_TRAIN])
    test = _read_batch(folder / TORCHVISION_TEST[0], canonical)
    return train, test


def _read_batch(path: Path, canonical: np.ndarray) -> Split:
    if not path.exists():
        raise DataError(f"missing CIFAR-10 batch file {path}: {EXPECTED_LAYOUT}")
    entry = _unpickle(path)
    try:
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"damaged CIFAR-10 batch file {path} ({e}): re-download it") from None
    if len(images) != len(labels):
        raise DataError(f"damaged CIFAR-10 batch file {path}: image and label counts differ")
    if labels.size and (labels.min() < 0 or labels.max() >= len(canonical)):
        raise DataError(f"damaged CIFAR-10 batch file {path}: labels outside 0-9; re-download it")
    return Split(np.ascontiguousarray(images), canonical[labels])


class ForeignPickle(pickle.UnpicklingError):
    """A pickle that names a callable a CIFAR-10 batch does not hold; refused, never called."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 batch holds (dicts, lists, strings, numbers, numpy arrays) and
    nothing else: a pickle names the callables it runs, and any name outside this list is refused
    before it is imported, so a hostile file cannot run code. The batches pickled by Python 2 name
    numpy.core, those by numpy 2 numpy._core: both mean the same function."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _BATCH_GLOBALS:
            raise ForeignPickle(f"{module}.{name} is not part of a CIFAR-10 batch")
        return _BATCH_GLOBALS[module, name]


# numpy's array unpicklers, as an array names them when pickled (their modules are private):
# one for pickle protocols up to 4, one for protocol 5 (the array's bytes out of band).
_RECONSTRUCT = np.empty(1).__reduce_ex__(2)[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]
_BATCH_GLOBALS = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _FROMBUFFER for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes, as Python 3 pickles them (protocol 2)
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _BatchUnpickler(f, encoding="latin1").load()
    except ForeignPickle as e:
        raise DataError(
            f"refused CIFAR-10 file {path}: it holds more than a CIFAR-10 batch ({e}), so it was "
            "not loaded; replace it with torchvision's file"
        ) from None
    except Exception as e:  # a truncated or foreign file: anything, EOFError to ValueError
        raise DataError(
            f"damaged CIFAR-10 file {path} ({type(e).__name__}): re-download it"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"damaged CIFAR-10 file {path}: not a CIFAR-10 batch")
    return entry


def _concat(splits: list[Split]) -> Split:
    return Split(
        np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits])
    )


# --- image folder --------------------------------------------------------------------------


def _read_image_folder(root: Path, cache_dir: Path) -> tuple[Split, Split]:
    files = {name: _list_split(root, name) for name in ("train", "test")}
    labels = {
        name: dict(zip(folders, class_labels(list(folders), str(root / name), f"{name}/")))
        for name, folders in files.items()
    }
    source = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
    cache = cache_dir / f"{source}-{_fingerprint(root, files)}.npz"
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    train = _decode_split(files["train"], labels["train"])
    test = _decode_split(files["test"], labels["test"])
    _write_cache(cache, f"{source}-*.npz", train, test)
    return train, test


def _read_cache(cache: Path) -> tuple[Split, Split] | None:
    """The cached arrays, or None when there is no cache or it cannot be read (a damaged file is
    removed and rebuilt rather than failing every later run; one that cannot even be removed, in
    a folder we may not write, is left: the images are decoded again)."""
    try:
        with np.load(cache) as stored:
            if tuple(str(c) for c in stored["classes"]) != CLASSES:
                raise ValueError("labels in another order")
            return (
                Split(stored["train_images"], stored["train_labels"]),
                Split(stored["test_images"], stored["test_labels"]),
            )
    except FileNotFoundError:
        return None
    except Exception:  # zipfile, pickle, numpy and the OS all have their own errors
        with contextlib.suppress(OSError):
            cache.unlink(missing_ok=True)
        return None


def _write_cache(cache: Path, versions: str, train: Split, test: Split) -> None:
    """Write `cache`, then remove the source's older versions (matching the glob `versions`): one
    file per source (185 MB for CIFAR-10). A cache that cannot be written (read-only, full disk)
    is a warning: the images are decoded, so training goes on without the cache."""
    try:
        _save_atomically(
            cache,
            train_images=train.images, train_labels=train.labels,
            test_images=test.images, test_labels=test.labels,
            classes=np.array(CLASSES),
        )  # fmt: skip
    except OSError as e:
        warnings.warn(
            f"cannot write the decoded-image cache {cache} ({e.strerror or type(e).__name__}): "
            "training without it; set CIFAR_MLFLOW_CACHE to a writable folder to decode only once",
            stacklevel=2,
        )
        return
    for older in cache.parent.glob(versions):
        if older != cache:
            older.unlink(missing_ok=True)


def _list_split(root: Path, name: str) -> dict[str, list[Path]]:
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"missing folder {folder}: {EXPECTED_LAYOUT}")
    classes = {d.name: d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if not classes:
        raise DataError(f"no class folders in {folder}: {EXPECTED_LAYOUT}")
    listed = {
        c: sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
        for c, d in classes.items()
    }
    empty = [c for c, paths in listed.items() if not paths]
    if empty:
        raise DataError(f"class folder {folder / empty[0]} holds no images: {EXPECTED_LAYOUT}")
    return listed


# Part of every cache's name: a cache decoded by an earlier decode_image (which read 16-bit
# pixels as white) is never read again.
DECODER_VERSION = 2


def _fingerprint(root: Path, files: dict[str, dict[str, list[Path]]]) -> str:
    """Changes when any file is added, removed, resized or touched, or the decoding changes, so
    a stale cache is never read."""
    digest = hashlib.sha1(f"{root}\ndecoder {DECODER_VERSION}".encode())
    for split in sorted(files):
        for cls in sorted(files[split]):
            for path in files[split][cls]:
                st = path.stat()
                digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode_split(files: dict[str, list[Path]], label_of: dict[str, int]) -> Split:
    """The images of each class folder in `files`, the folders in label order."""
    folders = sorted(files, key=label_of.__getitem__)
    paths = [p for f in folders for p in files[f]]
    labels = np.array([label_of[f] for f in folders for _ in files[f]], dtype=np.int64)
    images = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        images[i] = decode_image(paths[i])

    # Pillow releases the GIL while decoding, so threads use both cores.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(decode, range(len(paths)), chunksize=256))
    return Split(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels)


def decode_image(path: Path) -> np.ndarray:
    """(32, 32, 3) uint8 RGB of an image file, the one decoding of training data and of the
    photos `predict` reads: turned upright as its EXIF orientation says, 16-bit and floating-point
    pixels scaled to 8 bits, transparent pixels shown over white, then resized bilinearly where it
    is not 32x32. A file that cannot be read, or whose pixels have no meaning as a picture here,
    raises a DataError that names it: never a blank or garbage image."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            rgb = _as_rgb8(ImageOps.exif_transpose(image))
    except DataError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(
            f"cannot decode image {path} ({type(e).__name__}: {e}): remove or replace the file"
        ) from None
    if isinstance(rgb, str):
        raise DataError(f"cannot use image {path}: {rgb}; convert it to 8-bit RGB or remove it")
    if rgb.size != (32, 32):
        rgb = rgb.resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


# Modes Pillow converts to RGB faithfully: 1-bit, 8-bit grey, palette, CMYK (Adobe's inverted
# JPEGs are undone by the decoder), YCbCr, and RGB with or without padding.
_RGB_AS_IS = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}
_WITH_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _as_rgb8(image):
    """The image in 8-bit RGB (a Pillow image), or a string saying why it has no such picture.
    Pillow's own convert("RGB") clips 16-bit and float pixels to 255: a white image."""
    from PIL import Image

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    mode = image.mode
    if mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _RGB_AS_IS:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT or mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        low, high = (0.0, 65535.0) if mode != "F" else (0.0, 1.0)
        if not np.isfinite(pixels).all() or pixels.min() < low or pixels.max() > high:
            kind = "floating-point pixels outside 0-1" if mode == "F" else "pixels outside 0-65535"
            return f"{kind} (mode {mode}), so their brightness is unknown"
        grey = np.rint(pixels * (255.0 / high)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return f"pixel format {mode} is not read here"


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cifar-mlflow"
    return Path(os.environ.get("CIFAR_MLFLOW_CACHE", default))


def _save_atomically(path: Path, **arrays: np.ndarray) -> None:
    """A killed process never leaves a truncated cache that the next run would read."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)
