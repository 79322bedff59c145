"""Thumbnail boxes and pad colours: parsed from option text (without Pillow, so bad ones are usage errors), and measured."""

from __future__ import annotations

from pipeline.errors import UsageError

_SIZE_RANGE = (8, 16384)


def parse_size(value: object) -> int | str:
    """One thumbnail size: ``256`` (a longest side: the box 256x256) or ``"512x384"``.

    Returned as an int for a square box (``"256x256"`` is ``256``: the same thumbnails, the
    same name) and as ``"WxH"`` otherwise. ``UsageError`` for anything else.
    """
    if isinstance(value, tuple | list) and len(value) == 2:
        value = f"{value[0]}x{value[1]}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"--sizes: {value!r} is not a size; give a longest side or WxH, e.g. 256,512x384")
    parts = str(value).strip().lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--sizes: {str(value).strip()!r} is not a size; give a longest side or WxH, e.g. 256,512x384")
    sides = [int(p) for p in parts]
    low, high = _SIZE_RANGE
    if not all(low <= n <= high for n in sides):
        raise UsageError(f"--sizes must be between {low} and {high}")
    if len(sides) == 1 or sides[0] == sides[1]:
        return sides[0]
    return f"{sides[0]}x{sides[1]}"


def size_box(size: int | str) -> tuple[int, int]:
    """(width, height) of the box of a parsed size: ``256`` → (256, 256)."""
    if isinstance(size, int):
        return size, size
    width, height = size.split("x")
    return int(width), int(height)


def size_order(size: int | str) -> tuple[int, int, int]:
    """Sort key, smallest first: longest side, then area, then width."""
    width, height = size_box(size)
    return max(width, height), width * height, width


_COLOURS = {
    "black": "000000", "white": "ffffff", "gray": "808080", "grey": "808080",
    "silver": "c0c0c0", "red": "ff0000", "green": "008000", "lime": "00ff00",
    "blue": "0000ff", "yellow": "ffff00", "cyan": "00ffff", "magenta": "ff00ff",
    "transparent": "transparent",
}  # fmt: skip
_HEX = frozenset("0123456789abcdef")


def parse_color(text: str) -> str:
    """A pad colour as its tag: ``rrggbb``, ``rrggbbaa`` (not opaque) or ``transparent``.

    Accepts ``#rgb``, ``#rrggbb``, ``#rrggbbaa`` (the ``#`` optional) and a few names
    (black, white, gray, ...; ``transparent``).
    """
    value = text.strip().lower()
    if value in _COLOURS:
        return _COLOURS[value]
    digits = value.removeprefix("#")
    if set(digits) <= _HEX and len(digits) in (3, 6, 8):
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        if digits == "00000000":
            return "transparent"
        return digits[:6] if digits[6:] == "ff" else digits
    raise UsageError(
        f"--pad-color: {text!r} is not a colour; give #rrggbb, #rrggbbaa or one of {', '.join(_COLOURS)}"
    )


def color_rgba(tag: str) -> tuple[int, int, int, int]:
    """(r, g, b, a) of a ``parse_color`` tag."""
    if tag == "transparent":
        return 0, 0, 0, 0
    digits = tag if len(tag) == 8 else tag + "ff"
    r, g, b, a = (int(digits[i : i + 2], 16) for i in range(0, 8, 2))
    return r, g, b, a
