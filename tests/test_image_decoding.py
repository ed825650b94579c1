"""Image files that are valid but not 8-bit RGB JPEGs or PNGs: each decoded to its right 8-bit
RGB picture (compared pixel by pixel with the picture it was written from) or refused by name,
never a blank or garbage image; training data and `predict` read them the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cifar_mlflow.cli import cli
from cifar_mlflow.core.data import DataError, decode_image, load_cifar10

from .conftest import write_image_folder

RNG = np.random.default_rng(7)
GREY = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
RGB = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
# Smooth, so that a lossy JPEG keeps it within a few levels.
SMOOTH = np.stack([*np.meshgrid(np.arange(32) * 8, np.arange(32) * 8), np.full((32, 32), 128)],
                  axis=-1).astype(np.uint8)  # fmt: skip
WHITE = np.full(3, 255, np.uint8)


def as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def grey16_png(path):
    Image.fromarray(GREY.astype(np.uint16) * 257).save(path.with_suffix(".png"))
    return path.with_suffix(".png"), as_rgb(GREY), 0


def grey16_tiff(path):
    Image.fromarray(GREY.astype(np.uint16) * 257).save(path.with_suffix(".tif"))
    return path.with_suffix(".tif"), as_rgb(GREY), 0


def float_tiff(path):
    Image.fromarray(GREY.astype(np.float32) / 255).save(path.with_suffix(".tif"))
    return path.with_suffix(".tif"), as_rgb(GREY), 0


def palette_with_transparency(path):
    image = Image.fromarray(RGB).quantize(16)
    expected = np.asarray(image.convert("RGB")).copy()
    expected[np.asarray(image) == 0] = WHITE
    image.save(path.with_suffix(".png"), transparency=0)
    return path.with_suffix(".png"), expected, 0


def grey_alpha(path):
    alpha = np.where(np.arange(32)[:, None] < 16, 255, 0).astype(np.uint8) * np.ones((1, 32),
                                                                                    np.uint8)
    Image.fromarray(np.dstack([GREY, alpha]), "LA").save(path.with_suffix(".png"))
    expected = as_rgb(np.where(alpha == 255, GREY, 255).astype(np.uint8))
    return path.with_suffix(".png"), expected, 0


def rgba_half_transparent(path):
    alpha = np.full((32, 32), 128, np.uint8)
    Image.fromarray(np.dstack([RGB, alpha]), "RGBA").save(path.with_suffix(".png"))
    expected = (RGB * (128 / 255) + 255 * (127 / 255)).round().astype(np.uint8)
    return path.with_suffix(".png"), expected, 1


def cmyk_jpeg(path):
    Image.fromarray(SMOOTH).convert("CMYK").save(path.with_suffix(".jpg"), quality=100,
                                                  subsampling=0)  # fmt: skip
    return path.with_suffix(".jpg"), SMOOTH, 4


def one_bit(path):
    bits = GREY > 127
    Image.fromarray(bits).convert("1").save(path.with_suffix(".png"))
    return path.with_suffix(".png"), as_rgb(np.where(bits, 255, 0).astype(np.uint8)), 0


def exif_rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(RGB).rotate(90, expand=True).save(path.with_suffix(".png"), exif=exif)
    return path.with_suffix(".png"), RGB, 0


def progressive_jpeg(path):
    Image.fromarray(SMOOTH).save(path.with_suffix(".jpg"), progressive=True, quality=100,
                                 subsampling=0)  # fmt: skip
    return path.with_suffix(".jpg"), SMOOTH, 4


def large_16bit(path):  # resized like any other large image: same as its 8-bit twin
    big = np.kron(GREY, np.ones((4, 4), np.uint8))
    Image.fromarray(big.astype(np.uint16) * 257).save(path.with_suffix(".png"))
    expected = np.asarray(Image.fromarray(as_rgb(big)).resize((32, 32), Image.Resampling.BILINEAR))
    return path.with_suffix(".png"), expected, 1


DECODED = [grey16_png, grey16_tiff, float_tiff, palette_with_transparency, grey_alpha,
           rgba_half_transparent, cmyk_jpeg, one_bit, exif_rotated, progressive_jpeg,
           large_16bit]  # fmt: skip


@pytest.mark.parametrize("write", DECODED, ids=lambda f: f.__name__)
def test_an_odd_image_is_decoded_to_its_picture(write, tmp_path):
    path, expected, tolerance = write(tmp_path / "image")
    decoded = decode_image(path)
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    difference = np.abs(decoded.astype(int) - expected.astype(int))
    assert difference.max() <= tolerance, (difference.max(), difference.mean())
    assert decoded.std() > 10  # a picture, not a blank


def float_out_of_range(path):
    Image.fromarray(GREY.astype(np.float32)).save(path.with_suffix(".tif"))  # 0-255 as floats
    return path.with_suffix(".tif"), "floating-point pixels outside 0-1"


def int32_out_of_range(path):
    Image.fromarray(GREY.astype(np.int32) * 100_000).save(path.with_suffix(".tif"))
    return path.with_suffix(".tif"), "pixels outside 0-65535"


@pytest.mark.parametrize("write", [float_out_of_range, int32_out_of_range],
                         ids=lambda f: f.__name__)  # fmt: skip
def test_an_image_without_a_meaning_as_a_picture_is_refused_by_name(write, tmp_path):
    path, reason = write(tmp_path / "image")
    with pytest.raises(DataError, match=f"cannot use image {path}: {reason}"):
        decode_image(path)


def test_training_data_and_predict_read_a_16_bit_image_alike_and_never_cache_a_refusal(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    [first] = sorted((root / "test" / "airplane").iterdir())
    first.unlink()
    path, expected, _ = grey16_png(root / "test" / "airplane" / "0000")
    data = load_cifar10(root)
    np.testing.assert_array_equal(data.test.images[0], expected.transpose(2, 0, 1))

    result = CliRunner().invoke(cli, ["predict", str(path), "--print-request"])
    assert result.exit_code == 0, result.output
    request = np.asarray(json.loads(result.output)["inputs"], dtype=np.float32)
    np.testing.assert_array_equal(np.rint(request[0] * 255).astype(np.uint8),
                                  expected.transpose(2, 0, 1))  # fmt: skip

    bad, _ = float_out_of_range(root / "train" / "cat" / "bad")
    cached = sorted((tmp_path / "cache").iterdir())
    with pytest.raises(DataError, match=f"cannot use image {bad}"):
        load_cifar10(root)
    assert sorted((tmp_path / "cache").iterdir()) == cached  # nothing new cached
    result = CliRunner().invoke(cli, ["predict", str(bad), "--print-request"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: cannot use image {bad}: floating-point pixels outside 0-1 (mode F), so their "
        "brightness is unknown; convert it to 8-bit RGB or remove it"
    ]
