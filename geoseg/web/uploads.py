"""Upload checks: the type from the content, never the name; sizes and pixel counts within limits."""

from __future__ import annotations

import warnings
from pathlib import Path

from geoseg.errors import InputError

__all__ = ["UploadError", "sniff", "check_pixels", "display_name"]

MAX_STEM_BYTES = 150  # of a stored upload's name, in UTF-8: 文 is 3 bytes

SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpg",
    b"II*\x00": "tif",
    b"MM\x00*": "tif",
    b"II+\x00": "tif",  # BigTIFF
    b"MM\x00+": "tif",
}


class UploadError(InputError):
    """An upload the server refuses; `status` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff(head: bytes, *, what: str = "image") -> str:
    """Return 'png', 'jpg' or 'tif' from a file's first bytes, or raise UploadError (415).

    `what` names the upload in the message ("image", "label").
    """
    if not head:
        raise UploadError(f"the {what} file is empty (0 bytes). Upload it again.", 400)
    for magic, kind in SIGNATURES.items():
        if head.startswith(magic):
            return kind
    raise UploadError(f"the {what} file is not a PNG, JPEG or GeoTIFF (checked from its content, not its name). "
                      "Upload one of those.", 415)


def check_pixels(path: Path, max_pixels: int) -> tuple[int, int, int]:
    """Open the saved upload with rasterio; refuse unreadable files and ones over `max_pixels`."""
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                size = (ds.width, ds.height, ds.count)
    except rasterio.errors.RasterioIOError:
        raise UploadError("the file looks like an image but cannot be read. Is it truncated?", 400) from None
    if size[0] * size[1] > max_pixels:
        raise UploadError(f"the image has {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} Mpx; this server "
                          f"takes at most {max_pixels / 1e6:.1f} Mpx. Use the command line for larger rasters.", 413)
    return size


def display_name(name: str | None) -> str:
    """A safe file name to show and to store the upload under: the last part of `name`, letters (of any
    script), digits, ``-_.()`` and spaces kept, anything else ``_``; no leading dot. werkzeug's
    `secure_filename` dropped every non-ASCII letter, so ``文件.tif`` became ``tif``."""
    import re
    import unicodedata

    base = unicodedata.normalize("NFC", (name or "").replace("\\", "/")).rsplit("/", 1)[-1]
    safe = re.sub(r"[^\w\-. ()]", "_", base).strip(" .")
    stem, suffix = Path(safe).stem, Path(safe).suffix[:10]
    while len(stem.encode()) > MAX_STEM_BYTES:  # outputs add up to ~30 bytes; file names end at 255 bytes
        stem = stem[:-1]
    return f"{stem}{suffix}" if stem.strip("_ ") else "upload"
