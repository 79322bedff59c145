"""libwebp's scaling decoder, through ctypes, on the libwebp Pillow already loaded.

Pillow decodes a WebP at full size only (``draft`` is JPEG's; its WebP plugin goes through
``WebPAnimDecoder``, which has no scaling, and copies the frame twice more). libwebp itself
can write its output straight at a smaller size (``WebPDecoderOptions.use_scaling``: the
bitstream is still decoded whole, but the colour conversion, the output buffer and our
resize work at the small size): ~2x less CPU per image and no full-size copy in memory
(bench/formats.py, bench/README.md "Decode cost per format").

No new dependency: the library is the one Pillow's own ``_webp`` module links (found in
``/proc/self/maps`` once that module is loaded, else beside Pillow's package), so the
bytes are parsed by the same code either way. The structures below are libwebp's
``decode.h`` (``WEBP_DECODER_ABI_VERSION`` 0x0209, libwebp >= 0.5, 2016); libwebp checks the
version we pass and refuses a different major one, and then ``decode_scaled`` returns None
and the caller decodes through Pillow as before. Imports no Pillow; ``load`` is handed
Pillow's folder to look in (by ``decode._webp_scaled``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

import numpy as np

_ABI = 0x0209
_MODE_RGB, _MODE_RGBA = 0, 1
_NOT_ENOUGH_DATA = 7
_UNSUPPORTED_FEATURE = 4
_STATUS = {
    1: "out of memory",
    2: "invalid parameter",
    3: "bitstream error",
    4: "unsupported feature",
    5: "suspended",
    6: "user abort",
    7: "truncated: not enough data",
}


class _Features(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("has_alpha", ctypes.c_int),
        ("has_animation", ctypes.c_int),
        ("format", ctypes.c_int),
        ("pad", ctypes.c_uint32 * 5),
    ]


class _RGBABuffer(ctypes.Structure):
    _fields_ = [("rgba", ctypes.c_void_p), ("stride", ctypes.c_int), ("size", ctypes.c_size_t)]


class _YUVABuffer(ctypes.Structure):  # only for the union's size
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("y", "u", "v", "a")),
        *((name, ctypes.c_int) for name in ("y_stride", "u_stride", "v_stride", "a_stride")),
        *((name, ctypes.c_size_t) for name in ("y_size", "u_size", "v_size", "a_size")),
    ]


class _Buffers(ctypes.Union):
    _fields_ = [("RGBA", _RGBABuffer), ("YUVA", _YUVABuffer)]


class _DecBuffer(ctypes.Structure):
    _fields_ = [
        ("colorspace", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("is_external_memory", ctypes.c_int),
        ("u", _Buffers),
        ("pad", ctypes.c_uint32 * 4),
        ("private_memory", ctypes.c_void_p),
    ]


class _Options(ctypes.Structure):
    _NAMES = (
        "bypass_filtering", "no_fancy_upsampling", "use_cropping", "crop_left", "crop_top",
        "crop_width", "crop_height", "use_scaling", "scaled_width", "scaled_height",
        "use_threads", "dithering_strength", "flip", "alpha_dithering_strength",
    )  # fmt: skip
    _fields_ = [*((name, ctypes.c_int) for name in _NAMES), ("pad", ctypes.c_uint32 * 5)]


class _Config(ctypes.Structure):
    _fields_ = [("input", _Features), ("output", _DecBuffer), ("options", _Options)]


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def load(pillow_dir: Path) -> ctypes.CDLL | None:
    """The libwebp in use by Pillow (once per process), or None if it cannot be found."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            _lib = _open(pillow_dir)
            _tried = True
    return _lib


def _candidates(pillow_dir: Path) -> list[str]:
    found: list[str] = []
    try:  # Linux: exactly the file Pillow's _webp module mapped
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                name = os.path.basename(path)
                if name.startswith(("libwebp-", "libwebp.")) and path not in found:
                    found.append(path)
    except OSError:
        pass
    for libs in (pillow_dir.parent / "pillow.libs", pillow_dir / ".dylibs"):  # manylinux, macOS wheels
        found += sorted(str(p) for p in libs.glob("libwebp[-.]*") if "mux" not in p.name)
    system = ctypes.util.find_library("webp")
    if system:
        found.append(system)
    return found


def _open(pillow_dir: Path) -> ctypes.CDLL | None:
    for path in _candidates(pillow_dir):
        try:
            lib = ctypes.CDLL(path)
            lib.WebPInitDecoderConfigInternal.argtypes = [ctypes.POINTER(_Config), ctypes.c_int]
            lib.WebPGetFeaturesInternal.argtypes = [
                ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Features), ctypes.c_int,
            ]  # fmt: skip
            lib.WebPDecode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Config)]
            lib.WebPFreeDecBuffer.argtypes = [ctypes.POINTER(_DecBuffer)]
        except (OSError, AttributeError):
            continue
        if lib.WebPInitDecoderConfigInternal(ctypes.byref(_Config()), _ABI):
            return lib
    return None


def decode_scaled(lib: ctypes.CDLL, data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """``data`` decoded straight to ``size`` (w, h): an (h, w, 3 or 4) uint8 array.

    None when libwebp will not do it here (an animation, a library of another ABI): decode
    through Pillow instead. ``OSError`` for bad data (libwebp's status in the message).
    """
    config = _Config()
    if not lib.WebPInitDecoderConfigInternal(ctypes.byref(config), _ABI):
        return None
    status = lib.WebPGetFeaturesInternal(data, len(data), ctypes.byref(config.input), _ABI)
    if status != 0:
        raise OSError(f"libwebp: {_STATUS.get(status, status)}")
    if config.input.has_animation:
        return None
    width, height = size
    channels = 4 if config.input.has_alpha else 3
    pixels = np.empty((height, width, channels), np.uint8)
    config.options.use_scaling = 1
    config.options.scaled_width = width
    config.options.scaled_height = height
    out = config.output
    out.colorspace = _MODE_RGBA if channels == 4 else _MODE_RGB
    out.is_external_memory = 1  # straight into ``pixels``: no copy
    out.u.RGBA.rgba = pixels.ctypes.data
    out.u.RGBA.stride = width * channels
    out.u.RGBA.size = pixels.nbytes
    status = lib.WebPDecode(data, len(data), ctypes.byref(config))  # ctypes releases the GIL
    lib.WebPFreeDecBuffer(ctypes.byref(out))
    if status == _UNSUPPORTED_FEATURE:
        return None
    if status != 0:
        raise OSError(f"libwebp: {_STATUS.get(status, status)}")
    return pixels
