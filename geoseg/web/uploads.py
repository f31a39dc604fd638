"""Upload checks: the type from the content, never the name; sizes and pixel counts within limits."""

from __future__ import annotations

import warnings
from pathlib import Path

from geoseg.errors import InputError, apart, catch_warnings

__all__ = ["UploadError", "sniff", "check_driver", "check_pixels", "check_readable", "display_name"]

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

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field  # the form's field at fault ("image", "normalize"...): the page marks and focuses it


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


DRIVERS = {"png": "PNG", "jpg": "JPEG", "tif": "GTiff"}  # the GDAL driver each sniffed type must open with
# Text that GDAL drivers look for anywhere in a file's first bytes, of formats whose header names other files or
# URLs to read (VRT sources, PDS/ISIS/VICAR labels' data files, WMS servers): lower case, searched in `HEAD_BYTES`
LABEL_MARKERS = {b"<vrtdataset": "a GDAL VRT", b"<gdal_wms": "a GDAL WMS description",
                 b"<gdal_wcs": "a GDAL WCS description", b"pds_version_id": "a PDS label", b"^image": "a PDS label",
                 b"isiscube": "an ISIS cube label", b"lblsize": "a VICAR label"}
HEAD_BYTES = 8192


def check_driver(path: Path, kind: str, *, what: str = "image") -> None:
    """Refuse (415) a saved upload that GDAL opens with any driver but the one of its sniffed `kind`.

    GDAL picks a driver by the content, and some look anywhere in the first kilobyte: ``\\xff\\xd8\\xff`` (a
    JPEG's magic) then ``<VRTDataset>`` opened as a VRT whose sources were any local file (/etc/passwd, as a
    raw band) or URL (/vsicurl/), and the page served their pixels back as the job's original.png. Every later
    open of the upload is unrestricted, so the driver GDAL picks with no restriction is the one checked.
    """
    import rasterio

    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES).lower()
    if marker := next((m for m in LABEL_MARKERS if m in head), None):  # refused before GDAL opens it: no source it
        raise UploadError(f"the {what} file starts as a {DRIVERS[kind]} but holds the text of {LABEL_MARKERS[marker]}, "
                          "a format that reads other files. Upload a PNG, JPEG or GeoTIFF.", 415)  # names is opened
    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                driver = ds.driver
    except rasterio.errors.RasterioIOError:
        return  # check_pixels says it cannot be read
    if driver != DRIVERS[kind]:
        raise UploadError(f"the {what} file starts as a {DRIVERS[kind]} but is not one (GDAL reads it as {driver}). "
                          "Upload a PNG, JPEG or GeoTIFF.", 415)


BYTES_PER_PIXEL = 16  # the decoded size an upload may have per pixel of the limit: four float32 bands
BLOCK_BYTES = 64_000_000  # the largest decoded block (a GeoTIFF's tile or strip) allowed beyond twice the image's


def check_pixels(path: Path, max_pixels: int, *, name: str = "the image") -> tuple[int, int, int]:
    """Open the saved upload with rasterio; refuse unreadable files and ones over `max_pixels`.

    `name` is how messages call the upload (the user's file name, never `path`).
    """
    import numpy as np
    import rasterio

    try:
        with catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                size = (ds.width, ds.height, ds.count)
                decoded = ds.width * ds.height * sum(np.dtype(t).itemsize for t in ds.dtypes)
                block = max(h * w for h, w in ds.block_shapes) * sum(np.dtype(t).itemsize for t in ds.dtypes)
    except rasterio.errors.RasterioIOError:
        raise UploadError(f"{name}: the file looks like an image, but it cannot be read: it looks truncated or "
                          "damaged. Upload it again, or a copy that opens in an image viewer.", 400) from None
    if size[0] * size[1] > max_pixels:
        # in pixels, and Mpx to 2 decimals or as many more as tell them apart: both were 0.6 Mpx at one decimal for
        # 791x718 against a 0.55 Mpx limit, and 0.01 Mpx at two for 101x100 against 0.01
        has, most = _mpx(size[0] * size[1], max_pixels)
        raise UploadError(f"{name} has {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels ({has} Mpx); this server "
                          f"takes at most {max_pixels:,} pixels ({most} Mpx). Use the command line for larger "
                          "rasters.", 413)
    if decoded > max_pixels * BYTES_PER_PIXEL:  # 3000 float64 bands in a 400 KB file asked the server for 23 GB
        # as many decimals as tell them apart: 0.20 and 0.16 MB both read 0.2 MB (--max-mpx 0.01)
        has, most = apart(decoded / 1e6, max_pixels * BYTES_PER_PIXEL / 1e6)
        raise UploadError(f"{name} has {size[2]} band(s) of {size[0]}x{size[1]} px, {has} MB decoded; this server "
                          f"takes at most {most} MB (four 32-bit bands at its pixel limit). Upload the bands a model "
                          "reads, or use the command line.", 413)
    if block > max(2 * decoded, BLOCK_BYTES):  # 100x100 px stored in one 16384² tile: 0.8 MB on disk, 1.7 GB and
        # 36 s of CPU to decode, in the request's thread (uploads at once took the server to 5 GB)
        raise UploadError(f"{name} is {size[0]}x{size[1]} px but stored in blocks of {block / 1e6:,.0f} MB decoded, "
                          "far larger than the image; this server does not decode those. Re-save it (gdal_translate "
                          "-co TILED=YES IN.tif OUT.tif) and upload that.", 413)
    return size


def check_readable(path: Path, kind: str, *, name: str) -> None:
    """Decode every pixel of the saved upload, or raise UploadError (400) naming it by `name`.

    A header that opens proves little: a truncated COG shows its overviews, and GDAL fills a cut
    PNG with zeros or garbage without an error (depending on what it read before). PNG and JPEG
    are decoded with Pillow, which refuses truncated data; GeoTIFFs are read with GDAL in windows
    of whole block rows (all bands: a band-interleaved file keeps its last band at the end).

    Notes
    -----
    The time is that of decoding the file once; for 4000 x 4000 RGB: 0.1 s (uncompressed GeoTIFF),
    0.4 s (deflate GeoTIFF or COG), 0.6 s (JPEG-compressed GeoTIFF), 0.2 s (PNG), 0.25 s (JPEG).
    A GeoTIFF is read about a million pixels at a time; Pillow holds the whole decoded image
    (3 bytes a pixel for RGB) until it returns.
    """
    readable = _decoded_by_pillow(path, kind) if kind in ("png", "jpg") else _read_by_gdal(path)
    if not readable:
        raise UploadError(f"{name}: the file looks like an image, but its pixels cannot be read: it looks "
                          "truncated or damaged. Upload it again, or a copy that opens in an image viewer.", 400)


def _decoded_by_pillow(path: Path, kind: str) -> bool:
    """Whether Pillow decodes the whole PNG or JPEG; GDAL decides for what Pillow does not open."""
    from PIL import Image, UnidentifiedImageError

    try:
        with catch_warnings():  # the server's pixel limit (checked before) decides, not Pillow's
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=["PNG" if kind == "png" else "JPEG"])
    except (UnidentifiedImageError, Image.DecompressionBombError):  # e.g. 12-bit JPEG, or over Pillow's limit
        return _read_by_gdal(path)
    except (OSError, SyntaxError, ValueError):  # Pillow knows the format and found it broken (bad CRC, ...)
        return False
    try:
        with image:
            image.load()
    except (OSError, SyntaxError, ValueError):  # "image file is truncated", broken data streams
        return False
    return True


def _read_by_gdal(path: Path, pixels: int = 1 << 20) -> bool:
    """Whether GDAL reads every band at full resolution, in windows of whole block rows."""
    import rasterio
    from rasterio.windows import Window

    try:  # libjpeg only warns on a cut file (a 12-bit JPEG, which Pillow cannot open, came here): an error
        with catch_warnings(), rasterio.Env(GDAL_ERROR_ON_LIBJPEG_WARNING=True):
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                block_rows = ds.block_shapes[0][0]
                step = max(1, pixels // (ds.width * block_rows)) * block_rows
                for row in range(0, ds.height, step):
                    ds.read(window=Window(0, row, ds.width, min(step, ds.height - row)))
    except rasterio.errors.RasterioError:
        return False
    return True


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


def _mpx(pixels: int, limit: int) -> tuple[str, str]:
    """`pixels` and `limit` in megapixels to 2 decimals, or as many more as tell them apart, without trailing
    zeros, with thousands separators (1.6e+03 was 1,600)."""
    return tuple(t.rstrip("0").rstrip(".") if "." in t else t for t in apart(pixels / 1e6, limit / 1e6, decimals=2))
