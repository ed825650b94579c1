"""Many similar figures, fast: a matplotlib frame drawn once, the rest per figure.

matplotlib spends most of a figure's time on its axes (~50 ms each on this 2-core machine: ticks,
tick labels, grid) and ~0.2 ms on each glyph of text (3.11 lays text out glyph by glyph in
Python). A `Stencil` draws a figure's frame (axes, ticks, axis labels) once per set of axis
limits and keeps its pixels; each figure then restores them, draws only its own artists, and
hands over to Pillow for text, bars and the PNG (~0.4 ms a string).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

DPI = 100
# Charts have few colours: a 256-colour palette PNG looks the same and, measured on a 1100x820
# chart, takes ~13 ms (quantize + zlib level 1) instead of ~32-50 ms as RGB, at half the size.
PALETTE_COLOURS = 256
SWATCH = 22  # pixels: the line before a legend entry


@dataclass(frozen=True)
class Label:
    """Text for Pillow to write: at pixel (x, y) from the top left, anchored as Pillow's anchors
    say ("mt": middle of the top edge, "lt": left top, "md": middle of the bottom edge). A
    swatch colour puts a legend line before it, at (x, y) (then the anchor must be "lm")."""

    x: float
    y: float
    text: str
    anchor: str = "lt"
    bold: bool = False
    points: float = 10
    colour: str = "black"
    swatch: str | None = None
    width: float = 0  # at most this many pixels wide (0: any), in smaller type if need be

    def font(self) -> ImageFont.FreeTypeFont:
        points = self.points
        while (
            self.width and points > 7 and _font(self.bold, points).getlength(self.text) > self.width
        ):
            points -= 0.5
        return _font(self.bold, points)


@dataclass(frozen=True)
class Box:
    """A filled rectangle for Pillow to draw, in pixels from the top left: a bar, or a line."""

    left: float
    top: float
    right: float
    bottom: float
    colour: str = "black"


def error_bar(x: float, high: float, low: float, cap: float = 5) -> list[Box]:
    return [Box(x - 0.75, high, x + 0.75, low), Box(x - cap, high - 0.75, x + cap, high + 0.75),
            Box(x - cap, low - 0.75, x + cap, low + 0.75)]  # fmt: skip


@cache
def _font(bold: bool, points: float) -> ImageFont.FreeTypeFont:
    # matplotlib's own default font, so labels match the tick labels.
    path = font_manager.findfont(font_manager.FontProperties(weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, round(points * DPI / 72))


class Stencil:
    """A figure whose frame is drawn once per set of axis limits; a chart draws its (animated)
    artists on a copy of the frame, then Pillow writes its labels and the PNG."""

    def __init__(self, figure: Figure):
        self.figure = figure
        self.canvas = FigureCanvasAgg(figure)
        self.frames: dict[tuple, object] = {}

    def to_pixels(self, transform, x: float, y: float) -> tuple[float, float]:
        """Pillow's pixel position of (x, y) in a matplotlib transform (y runs down in Pillow)."""
        px, py = transform.transform((x, y))
        return float(px), self.figure.bbox.height - float(py)

    def save(self, path: Path, artists: Iterable[Artist], labels: Iterable[Label],
             boxes: Iterable[Box] = ()) -> None:  # fmt: skip
        key = tuple((ax.get_xlim(), ax.get_ylim()) for ax in self.figure.axes)
        if key not in self.frames:
            self.canvas.draw()  # animated artists are left out
            self.frames[key] = self.canvas.copy_from_bbox(self.figure.bbox)
        self.canvas.restore_region(self.frames[key])
        for artist in sorted(artists, key=lambda a: a.get_zorder()):
            artist.axes.draw_artist(artist)
        image = Image.fromarray(np.asarray(self.canvas.buffer_rgba())).convert("RGB")
        draw = ImageDraw.Draw(image)
        for box in boxes:
            draw.rectangle((box.left, box.top, box.right, box.bottom), fill=box.colour)
        for label in labels:
            x = label.x
            if label.swatch:
                draw.line([(x, label.y), (x + SWATCH, label.y)], fill=label.swatch, width=3)
                x += SWATCH + 6
            draw.text((x, label.y), label.text, fill=label.colour, anchor=label.anchor,
                      font=label.font())  # fmt: skip
        image.quantize(PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE).save(
            path, compress_level=1
        )


def legend_row(entries: list[tuple[str | None, str]], y: float, width: float) -> list[Label]:
    """A one-line legend centred at height y: (colour or None for a plain heading, text)."""
    gap = 18
    sizes = [(SWATCH + 6 if colour else 0) + _font(False, 10).getlength(text)
             for colour, text in entries]  # fmt: skip
    x = (width - sum(sizes) - gap * (len(entries) - 1)) / 2
    labels = []
    for (colour, text), size in zip(entries, sizes):
        labels.append(Label(x, y, text, "lm", swatch=colour))
        x += size + gap
    return labels
