"""Decoding and encoding: OpenCV for the pixels (keeps 16-bit, alpha and grey), Pillow for
the header (format, size before any pixel is decoded, EXIF orientation).

Arrays are OpenCV-style: (H, W) grey, (H, W, 3) BGR or (H, W, 4) BGRA; uint8 or uint16.
"""
import io
import struct

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's own bomb check would warn or raise on its own threshold; we check against ours.
Image.MAX_IMAGE_PIXELS = None

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
OUTPUT_FORMATS = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
FORMAT_ALIASES = {"png": "png", "webp": "webp", "jpeg": "jpeg", "jpg": "jpeg"}
MEDIA_TO_FORMAT = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpeg", "image/jpg": "jpeg"}
DEFAULT_QUALITY = {"jpeg": 92, "webp": 90}


class ImageError(Exception):
    """An input or output problem with the HTTP status it deserves."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _truncated(fmt, data):
    """Cheap structural completeness checks, so a cut-off upload is a 400, not a half image."""
    if fmt == "JPEG":
        # FF D9 (end of image) must come after the last FF DA (start of scan): inside
        # entropy-coded data every FF byte is stuffed, so neither marker can appear there.
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if fmt == "WEBP":
        return len(data) < 8 or len(data) < 8 + struct.unpack("<I", data[4:8])[0]
    try:
        with Image.open(io.BytesIO(data)) as image:
            if fmt == "PNG":
                image.verify()  # walks every chunk to IEND and checks the CRCs, no pixel decoding
            else:
                image.load()
    except (OSError, SyntaxError, EOFError, ValueError, struct.error):
        return True
    return False


def orient(array, orientation):
    """Apply an EXIF orientation (1-8) the way Pillow's ImageOps.exif_transpose does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    if orientation not in ops:
        return array
    return np.ascontiguousarray(ops[orientation](array))


def probe(data, max_pixels):
    """Return (format, width, height, orientation) from the header, or raise ImageError."""
    if not data:
        raise ImageError(400, "empty body: send the image as the request body or as a multipart file field 'image'")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except (OSError, ValueError, TypeError, SyntaxError, struct.error):
                orientation = 1
    except UnidentifiedImageError:
        raise ImageError(415, "the body is not an image in a supported format (PNG, JPEG, WEBP, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ImageError(400, f"corrupt image header: {exc}") from None
    if fmt not in INPUT_FORMATS:
        raise ImageError(415, f"unsupported image format {fmt}; send PNG, JPEG, WEBP, BMP or TIFF")
    if width * height > max_pixels:
        raise ImageError(413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise ImageError(400, "image has no pixels")
    return fmt, width, height, orientation


def decode(data, max_pixels):
    """Bytes -> (array, format). The pixel limit is checked before decoding (bomb guard)."""
    fmt, width, height, orientation = probe(data, max_pixels)
    if _truncated(fmt, data):
        raise ImageError(400, f"truncated or corrupt {fmt} image")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageError(400, f"could not decode the {fmt} image (corrupt data)")
    if array.shape[0] != height or array.shape[1] != width:
        raise ImageError(400, f"decoded size {array.shape[1]}x{array.shape[0]} differs from the header's {width}x{height}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageError(415, f"unsupported sample type {array.dtype}; 8- and 16-bit images are supported")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] == 2:
        array = cv2.cvtColor(np.ascontiguousarray(array[:, :, 0]), cv2.COLOR_GRAY2BGRA)
    elif array.ndim != 2 and array.shape[2] not in (3, 4):
        raise ImageError(415, f"unsupported channel count {array.shape[2]}")
    return orient(array, orientation), fmt


def negotiate(format_param, accept):
    """Pick the output format from ``format`` (wins) or the Accept header; default PNG."""
    if format_param:
        fmt = FORMAT_ALIASES.get(format_param.strip().lower())
        if fmt is None:
            raise ImageError(422, f"format={format_param!r} is not one of png, webp, jpeg")
        return fmt
    if not accept:
        return "png"
    offers = []
    for position, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media, quality = parts[0].lower(), 1.0
        for param in parts[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality > 0:
            offers.append((-quality, position, media))
    for _q, _p, media in sorted(offers):
        if media in MEDIA_TO_FORMAT:
            return MEDIA_TO_FORMAT[media]
        if media in ("*/*", "image/*"):
            return "png"
    raise ImageError(406, f"none of the accepted types ({accept}) can be produced; use image/png, image/webp or image/jpeg")


def to_8bit(array):
    """uint16 -> uint8 with rounding (65535 -> 255)."""
    if array.dtype == np.uint8:
        return array
    return ((array.astype(np.float32) + 128.5) / 257.0).astype(np.uint8)


def encode(array, fmt, quality=None):
    """Array -> (bytes, media type). PNG keeps 16 bits and alpha; WEBP keeps alpha; JPEG neither."""
    if quality is not None and not 1 <= quality <= 100:
        raise ImageError(422, f"quality={quality} must be between 1 and 100")
    if fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    elif fmt == "jpeg":
        if array.ndim == 3 and array.shape[2] == 4:
            raise ImageError(422, "JPEG cannot store the alpha channel of this image; ask for png or webp")
        array = to_8bit(array)
        params = [cv2.IMWRITE_JPEG_QUALITY, quality or DEFAULT_QUALITY["jpeg"]]
    elif fmt == "webp":
        array = to_8bit(array)
        if array.ndim == 2:
            array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
        params = [cv2.IMWRITE_WEBP_QUALITY, quality or DEFAULT_QUALITY["webp"]]
    else:
        raise ImageError(422, f"unknown output format {fmt!r}")
    ok, buf = cv2.imencode("." + fmt, array, params)
    if not ok:
        raise ImageError(500, f"could not encode {fmt}")
    return buf.tobytes(), OUTPUT_FORMATS[fmt]
