"""WCAG 2 contrast: relative luminance, the contrast ratio, and see-through colours blended.

tinycss2 (``tinycss2.color4``) reads a CSS colour value; this module keeps only the
arithmetic WCAG defines. Shared by the static accessibility check and the dark-mode
check in Chromium.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from tinycss2.color4 import Color, parse_color

__all__ = [
    "AA_NORMAL_TEXT",
    "RGBA",
    "blend",
    "contrast_ratio",
    "parse_colour",
    "relative_luminance",
]

#: WCAG 2.x success criterion 1.4.3 (AA): the least contrast of text against its background
AA_NORMAL_TEXT = 4.5

class RGBA(NamedTuple):
    """A colour: red, green, blue from 0 to 255, alpha from 0 (transparent) to 1 (opaque)."""

    red: float
    green: float
    blue: float
    alpha: float = 1.0

    @property
    def opaque(self) -> bool:
        """Whether nothing behind it shows through."""
        return self.alpha >= 1.0

    @property
    def transparent(self) -> bool:
        """Whether it paints nothing at all."""
        return self.alpha <= 0.0

    def __str__(self) -> str:
        text = "#" + "".join(f"{round(channel):02x}" for channel in (self.red, self.green, self.blue))
        return text if self.opaque else f"{text} at {self.alpha:.0%}"


@functools.lru_cache(maxsize=1024)  # an email repeats its few colours in every style attribute
def parse_colour(value: str) -> RGBA | None:
    """A CSS colour (hex, ``rgb()``/``rgba()``, ``hsl()``/``hsla()``, a name, ``transparent``), by tinycss2.

    None for what can't be known without a browser: ``currentcolor``, ``var()``,
    ``light-dark()``, system colours, the newer colour spaces (``hwb()``, ``lab()`` …).
    """
    colour = parse_color(value)
    if not isinstance(colour, Color) or colour.space not in ("srgb", "hsl"):
        return None
    red, green, blue = (max(0.0, min(255.0, float(channel or 0) * 255)) for channel in colour.to("srgb").coordinates)
    return RGBA(red, green, blue, float(colour.alpha))


def blend(top: RGBA, bottom: RGBA) -> RGBA:
    """``top`` painted over an opaque ``bottom`` (source-over compositing)."""
    alpha = top.alpha
    return RGBA(
        top.red * alpha + bottom.red * (1 - alpha),
        top.green * alpha + bottom.green * (1 - alpha),
        top.blue * alpha + bottom.blue * (1 - alpha),
        1.0,
    )


def relative_luminance(colour: RGBA) -> float:
    """WCAG 2 relative luminance of an opaque colour (0 black … 1 white)."""

    def linear(channel: float) -> float:
        value = channel / 255
        return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(colour.red) + 0.7152 * linear(colour.green) + 0.0722 * linear(colour.blue)


def contrast_ratio(text: RGBA, background: RGBA) -> float:
    """WCAG 2 contrast ratio (1 … 21) of ``text`` over an opaque ``background``; see-through text is blended first."""
    foreground = text if text.opaque else blend(text, background)
    lighter, darker = sorted((relative_luminance(foreground), relative_luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)
