"""CSS colours and WCAG 2 contrast: parse a colour value, blend transparency, compute the ratio.

Shared by the static accessibility check and the dark-mode check in Chromium.
"""

from __future__ import annotations

import colorsys
import re
from typing import NamedTuple

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

_NAMED = {
    "aliceblue": "f0f8ff", "antiquewhite": "faebd7", "aqua": "00ffff", "aquamarine": "7fffd4", "azure": "f0ffff",
    "beige": "f5f5dc", "bisque": "ffe4c4", "black": "000000", "blanchedalmond": "ffebcd", "blue": "0000ff",
    "blueviolet": "8a2be2", "brown": "a52a2a", "burlywood": "deb887", "cadetblue": "5f9ea0", "chartreuse": "7fff00",
    "chocolate": "d2691e", "coral": "ff7f50", "cornflowerblue": "6495ed", "cornsilk": "fff8dc", "crimson": "dc143c",
    "cyan": "00ffff", "darkblue": "00008b", "darkcyan": "008b8b", "darkgoldenrod": "b8860b", "darkgray": "a9a9a9",
    "darkgreen": "006400", "darkgrey": "a9a9a9", "darkkhaki": "bdb76b", "darkmagenta": "8b008b",
    "darkolivegreen": "556b2f", "darkorange": "ff8c00", "darkorchid": "9932cc", "darkred": "8b0000",
    "darksalmon": "e9967a", "darkseagreen": "8fbc8f", "darkslateblue": "483d8b", "darkslategray": "2f4f4f",
    "darkslategrey": "2f4f4f", "darkturquoise": "00ced1", "darkviolet": "9400d3", "deeppink": "ff1493",
    "deepskyblue": "00bfff", "dimgray": "696969", "dimgrey": "696969", "dodgerblue": "1e90ff", "firebrick": "b22222",
    "floralwhite": "fffaf0", "forestgreen": "228b22", "fuchsia": "ff00ff", "gainsboro": "dcdcdc",
    "ghostwhite": "f8f8ff", "gold": "ffd700", "goldenrod": "daa520", "gray": "808080", "green": "008000",
    "greenyellow": "adff2f", "grey": "808080", "honeydew": "f0fff0", "hotpink": "ff69b4", "indianred": "cd5c5c",
    "indigo": "4b0082", "ivory": "fffff0", "khaki": "f0e68c", "lavender": "e6e6fa", "lavenderblush": "fff0f5",
    "lawngreen": "7cfc00", "lemonchiffon": "fffacd", "lightblue": "add8e6", "lightcoral": "f08080",
    "lightcyan": "e0ffff", "lightgoldenrodyellow": "fafad2", "lightgray": "d3d3d3", "lightgreen": "90ee90",
    "lightgrey": "d3d3d3", "lightpink": "ffb6c1", "lightsalmon": "ffa07a", "lightseagreen": "20b2aa",
    "lightskyblue": "87cefa", "lightslategray": "778899", "lightslategrey": "778899", "lightsteelblue": "b0c4de",
    "lightyellow": "ffffe0", "lime": "00ff00", "limegreen": "32cd32", "linen": "faf0e6", "magenta": "ff00ff",
    "maroon": "800000", "mediumaquamarine": "66cdaa", "mediumblue": "0000cd", "mediumorchid": "ba55d3",
    "mediumpurple": "9370db", "mediumseagreen": "3cb371", "mediumslateblue": "7b68ee", "mediumspringgreen": "00fa9a",
    "mediumturquoise": "48d1cc", "mediumvioletred": "c71585", "midnightblue": "191970", "mintcream": "f5fffa",
    "mistyrose": "ffe4e1", "moccasin": "ffe4b5", "navajowhite": "ffdead", "navy": "000080", "oldlace": "fdf5e6",
    "olive": "808000", "olivedrab": "6b8e23", "orange": "ffa500", "orangered": "ff4500", "orchid": "da70d6",
    "palegoldenrod": "eee8aa", "palegreen": "98fb98", "paleturquoise": "afeeee", "palevioletred": "db7093",
    "papayawhip": "ffefd5", "peachpuff": "ffdab9", "peru": "cd853f", "pink": "ffc0cb", "plum": "dda0dd",
    "powderblue": "b0e0e6", "purple": "800080", "rebeccapurple": "663399", "red": "ff0000", "rosybrown": "bc8f8f",
    "royalblue": "4169e1", "saddlebrown": "8b4513", "salmon": "fa8072", "sandybrown": "f4a460", "seagreen": "2e8b57",
    "seashell": "fff5ee", "sienna": "a0522d", "silver": "c0c0c0", "skyblue": "87ceeb", "slateblue": "6a5acd",
    "slategray": "708090", "slategrey": "708090", "snow": "fffafa", "springgreen": "00ff7f", "steelblue": "4682b4",
    "tan": "d2b48c", "teal": "008080", "thistle": "d8bfd8", "tomato": "ff6347", "turquoise": "40e0d0",
    "violet": "ee82ee", "wheat": "f5deb3", "white": "ffffff", "whitesmoke": "f5f5f5", "yellow": "ffff00",
    "yellowgreen": "9acd32",
}
_HEX = re.compile(r"#([0-9a-f]{3,4}|[0-9a-f]{6}|[0-9a-f]{8})")
_FUNCTION = re.compile(r"(rgba?|hsla?)\((.*)\)", re.S)


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


def parse_colour(value: str) -> RGBA | None:
    """A CSS colour (hex, ``rgb()``/``rgba()``, ``hsl()``/``hsla()``, a name, ``transparent``).

    None for what can't be known without a browser: ``currentcolor``, ``var()``,
    ``light-dark()``, system colours, the newer colour spaces.
    """
    text = value.strip().lower()
    if text == "transparent":
        return RGBA(0, 0, 0, 0.0)
    if text in _NAMED:
        return _from_hex(_NAMED[text])
    if match := _HEX.fullmatch(text):
        return _from_hex(match.group(1))
    match = _FUNCTION.fullmatch(text)
    if not match:
        return None
    parts = [part for part in re.split(r"[\s,/]+", match.group(2).strip()) if part]
    if len(parts) not in (3, 4):
        return None
    try:
        alpha = _alpha(parts[3]) if len(parts) == 4 else 1.0
        if match.group(1).startswith("rgb"):
            red, green, blue = (_channel(part) for part in parts[:3])
            return RGBA(red, green, blue, alpha)
        hue = float(parts[0].removesuffix("deg")) / 360 % 1.0
        saturation, lightness = (_percent(part) for part in parts[1:3])
    except ValueError:
        return None
    red, green, blue = colorsys.hls_to_rgb(hue, lightness, saturation)
    return RGBA(red * 255, green * 255, blue * 255, alpha)


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


def _from_hex(digits: str) -> RGBA:
    if len(digits) in (3, 4):
        digits = "".join(digit * 2 for digit in digits)
    red, green, blue = (int(digits[index:index + 2], 16) for index in (0, 2, 4))
    alpha = int(digits[6:8], 16) / 255 if len(digits) == 8 else 1.0
    return RGBA(red, green, blue, alpha)


def _channel(text: str) -> float:
    if text.endswith("%"):
        return max(0.0, min(255.0, float(text[:-1]) * 2.55))
    return max(0.0, min(255.0, float(text)))


def _percent(text: str) -> float:
    return max(0.0, min(1.0, float(text.removesuffix("%")) / 100))


def _alpha(text: str) -> float:
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return max(0.0, min(1.0, value))
