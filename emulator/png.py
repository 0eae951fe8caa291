"""A minimal PNG encoder (8-bit grayscale or RGB) with zlib: nothing to install."""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def encode(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array shaped (rows, cols) or (rows, cols, 3)."""
    if image.dtype != np.uint8:
        raise ValueError(f"PNG encoding needs uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"PNG encoding needs (rows, cols) or (rows, cols, 3), got shape {image.shape}")
    rows, cols = image.shape[:2]
    # Filter type 0 (None) before every scanline.
    raw = np.zeros((rows, 1 + cols * channels), dtype=np.uint8)
    raw[:, 1:] = image.reshape(rows, cols * channels)
    header = struct.pack(">IIBBBBB", cols, rows, 8, color_type, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b"")

