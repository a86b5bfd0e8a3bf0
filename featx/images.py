"""Decoding image files into RGB uint8 arrays."""

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

#: File name endings that featx reads as images; other files are skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """Whether ``name`` looks like an image file (by extension, hidden files excluded)."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(source: bytes | str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Decode one image into a ``(h, w, 3)`` uint8 RGB array.

    Grayscale, palette, RGBA and 16-bit images are converted to RGB (alpha is
    dropped). ``name`` is used in the error message; it defaults to the path.

    Raises
    ------
    DataError
        If the bytes are not a readable image; the message names the file.
    """
    if name is None:
        name = str(source) if not isinstance(source, bytes) else "<bytes>"
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
        with Image.open(fp) as img:
            img.load()
            if img.mode not in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
                img = img.convert("RGBA") if "A" in img.mode else _to_8bit(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"Image file not found: '{name}'.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"Cannot read '{name}' as an image ({exc.__class__.__name__}: {exc}). "
            "The file is corrupt or not an image: remove it or replace it with a valid "
            "JPEG/PNG file."
        ) from None


def _to_8bit(img: Image.Image) -> Image.Image:
    # 16-bit and float modes ("I;16", "I", "F") cannot go straight to RGB.
    arr = np.asarray(img, dtype=np.float64)
    hi = arr.max() if arr.size else 0.0
    scale = 255.0 / (65535.0 if hi > 255 else 255.0) if hi > 0 else 1.0
    return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to ``size`` = (height, width), bilinear."""
    if image.shape[:2] == tuple(size):
        return image
    img = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def image_digest(image: np.ndarray) -> bytes:
    """A 16-byte content hash of a uint8 image: its shape and pixels (BLAKE2b).

    Equal pixels give equal digests whatever the image's name or memory layout.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update("x".join(map(str, image.shape)).encode() + b"|")
    h.update(np.ascontiguousarray(image, dtype=np.uint8).data)
    return h.digest()
