"""Decoding image files into RGB uint8 arrays, brought to one stored size.

Photos are decoded at the size the backbones need, not at their full
resolution: :class:`ImageOptions` says how (the shorter side's bound and the
aspect policy) and :func:`load_image` decodes one file that way, using the
JPEG decoder's own downscaling (draft mode) before a quality resize.
"""

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, SettingsError

#: How an image of another shape is brought to the stored one.
ASPECTS = ("crop", "pad", "squash")
#: The shorter side stored by default: it covers every backbone's default input (224 and less).
DEFAULT_SIDE = 256
#: The largest side featx stores.
MAX_SIDE = 4096
_ORIENTATION = 0x0112  # EXIF tag

#: File name endings that featx reads as images; other files are skipped.
def _openable_extensions() -> tuple[str, ...]:
    """The file endings of every format this Pillow can open (.avif, .jfif, .heic with its plugin, ...)."""
    from PIL import ImageFile

    Image.init()
    found = {ext.lower() for ext, fmt in Image.registered_extensions().items()
             if fmt in Image.OPEN and fmt not in ("MPEG", "EPS")  # MPEG: its header only; EPS: needs Ghostscript
             and not (isinstance(Image.OPEN[fmt][0], type) and issubclass(Image.OPEN[fmt][0], ImageFile.StubImageFile))}  # stubs need a handler (HDF5, GRIB)
    return tuple(sorted(found | {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}))


IMAGE_EXTENSIONS = _openable_extensions()


@dataclass(frozen=True)
class ImageOptions:
    """How images of a folder or archive are brought to the one size that featx stores.

    Parameters
    ----------
    side : int, default=256
        Bound of the stored images' side. Images of one size whose shorter side
        is within it are stored as they are (CIFAR tiles); larger or mixed ones
        are stored as ``side`` x ``side`` squares (or the most common shorter
        side, where that is smaller).
    aspect : {"crop", "pad", "squash"}, default="crop"
        How an image of another shape becomes that square: "crop" brings its
        shorter side to the size and keeps the centre (the evaluation transform
        of vision libraries); "pad" fits the whole image inside, with black
        bands (letterbox); "squash" resizes it, aspect lost.

    >>> ImageOptions().describe(), ImageOptions(side=384, aspect="pad").describe()
    ('crop to 256', 'pad to 384')
    >>> ImageOptions(aspect="stretch")
    Traceback (most recent call last):
    ...
    featx.errors.SettingsError: aspect must be one of crop, pad, squash. Received: aspect='stretch'
    """

    side: int = DEFAULT_SIDE
    aspect: str = "crop"

    def __post_init__(self):
        if self.aspect not in ASPECTS:
            raise SettingsError(f"aspect must be one of {', '.join(ASPECTS)}. Received: aspect={self.aspect!r}")
        s = self.side
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 8 <= s <= MAX_SIDE:
            raise SettingsError(f"image side must be an integer from 8 to {MAX_SIDE} (pixels). Received: {s!r}")
        object.__setattr__(self, "side", int(s))

    def describe(self) -> str:
        return f"{self.aspect} to {self.side}"

    def target(self, sizes) -> tuple[int, int]:
        """The stored (height, width) for images of ``sizes`` ((h, w) each): their one size where
        it is within the bound, else a square of ``side`` (or of the most common shorter side,
        where that is smaller: small images are not blown up)."""
        sizes = [tuple(map(int, hw)) for hw in sizes]
        distinct = set(sizes)
        if len(distinct) == 1 and min(sizes[0]) <= self.side:
            return sizes[0]
        shorter = [min(hw) for hw in sizes]
        common = max(set(shorter), key=lambda v: (shorter.count(v), v))
        s = min(self.side, common)
        return (s, s)


def fit_image(img: "Image.Image", size: tuple[int, int], aspect: str) -> "Image.Image":
    """Bring a PIL image to ``size`` = (height, width) by the ``aspect`` policy (see :class:`ImageOptions`)."""
    h, w = size
    if (img.height, img.width) == (h, w):
        return img
    if aspect == "squash":
        return img.resize((w, h), Image.BICUBIC)
    if aspect == "crop":  # the centre box of the stored aspect, then resized: nothing from outside it
        cw, ch = min(img.width, round(img.height * w / h)), min(img.height, round(img.width * h / w))
        left, top = (img.width - cw) // 2, (img.height - ch) // 2
        img = img.crop((left, top, left + cw, top + ch)) if (cw, ch) != img.size else img
        return img.resize((w, h), Image.BICUBIC) if img.size != (w, h) else img
    scale = min(h / img.height, w / img.width)  # pad
    nw, nh = min(w, max(1, round(img.width * scale))), min(h, max(1, round(img.height * scale)))
    img = img.resize((nw, nh), Image.BICUBIC) if (nw, nh) != img.size else img
    out = Image.new("RGB", (w, h))
    out.paste(img, ((w - nw) // 2, (h - nh) // 2))
    return out


def image_size(source: bytes | str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image as featx decodes it (EXIF rotation applied), from its header alone."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            w, h = img.size
            if _orientation(img) in (5, 6, 7, 8):
                w, h = h, w
            return h, w
    except FileNotFoundError:
        raise DataError(f"Image file not found: '{name or source}'.") from None
    except Image.DecompressionBombError as exc:
        raise _bomb(name or ("<bytes>" if isinstance(source, bytes) else str(source)), exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(name or ("<bytes>" if isinstance(source, bytes) else str(source)), exc) from None


def load_image(source: bytes | str | os.PathLike, size: tuple[int, int] | None = None, aspect: str = "crop",
               *, name: str | None = None, draft: bool = True) -> np.ndarray:  # fmt: skip
    """Decode one image into a ``(h, w, 3)`` uint8 RGB array of ``size`` (by the ``aspect`` policy;
    None: as it is), EXIF rotation applied.

    A JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale that still covers ``size``
    (``draft``), then resized: a 3000x2000 photo stored at 256 never exists in memory at full size.
    """
    if name is None:
        name = str(source) if not isinstance(source, bytes) else "<bytes>"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            turn = _orientation(img)
            if draft and size is not None and img.format == "JPEG":
                h, w = size if turn not in (5, 6, 7, 8) else size[::-1]
                scale = (max if aspect == "crop" else min)(h / img.height, w / img.width)
                if aspect == "squash":
                    need = (w, h)
                else:
                    need = (math.ceil(img.width * scale), math.ceil(img.height * scale))
                img.draft("RGB", need)
            img.load()
            img = _to_rgb(img)
            if turn in _TRANSPOSE:
                img = img.transpose(_TRANSPOSE[turn])
            if size is not None:
                img = fit_image(img, tuple(size), aspect)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"Image file not found: '{name}'.") from None
    except Image.DecompressionBombError as exc:
        raise _bomb(name, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(name, exc) from None


def _orientation(img) -> int | None:
    try:
        return img.getexif().get(_ORIENTATION)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is no reason to refuse the pixels
        return None


#: EXIF orientation -> the transpose that shows the image upright.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # fmt: skip


def _to_rgb(img):
    if img.mode not in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
        img = img.convert("RGBA") if "A" in img.mode else _to_8bit(img)
    return img.convert("RGB") if img.mode != "RGB" else img


def _unreadable(name: str, exc: Exception) -> DataError:
    return DataError(
        f"Cannot read '{name}' as an image ({exc.__class__.__name__}: {exc}). "
        "The file is corrupt or not an image: remove it or replace it with a valid JPEG/PNG file."
    )


def _bomb(name: str, exc: Exception) -> DataError:
    return DataError(
        f"'{name}' claims more pixels than any photo has ({' '.join(str(exc).split())[:120]}): it is a decompression "
        "bomb or a damaged file, and is not decoded. Remove it, or shrink it first if it is a real image."
    )


def is_image_name(name: str) -> bool:
    """Whether ``name`` looks like an image file (by extension, hidden files excluded)."""
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(source: bytes | str | os.PathLike, name: str | None = None) -> np.ndarray:
    """Decode one image into a ``(h, w, 3)`` uint8 RGB array, at its own size (EXIF rotation applied).

    Grayscale, palette, RGBA and 16-bit images are converted to RGB (alpha is
    dropped). ``name`` is used in the error message; it defaults to the path.

    Raises
    ------
    DataError
        If the bytes are not a readable image; the message names the file.
    """
    return load_image(source, None, name=name)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float modes ("I;16", "I", "F"), which cannot go straight to RGB, scaled by their
    format's range, never by the image's own maximum: 16-bit (and Pillow's "I", which 16-bit
    PNG and TIFF files open as) 0..65535 -> 0..255 (/257), float 0..1 -> 0..255."""
    arr = np.asarray(img, dtype=np.float64)
    scale = 255.0 if img.mode == "F" else 1 / 257
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))


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
