"""The one upload pipeline for every image: selfies, ID and licence photos, vehicle photos.

``process_image`` turns untrusted upload bytes into a fresh JPEG built from the decoded pixels, or raises an
``AppError``; it never lets any other exception out (no 500 for a bad file). The order matters, and each step
exists because of a measured fact (TESTING.md F7-F9, PERFORMANCE.md):

1. Read at most ``max_bytes + 1`` bytes into memory: 413 ``payload_too_large`` past the limit. Nothing is
   written to disk and no temporary file is created (P-08).
2. Sniff the magic bytes ourselves, before Pillow sees anything. Known non-image or not-allowed formats (GIF,
   TIFF, WebP unless the policy allows it, HEIC, PDF, SVG/HTML, ZIP, ...) and a client ``Content-Type`` that
   disagrees with the bytes: 415 ``unsupported_media_type``. Bytes that are no known format at all (empty,
   one byte, random): 422 ``image_invalid``. PNG chunk CRCs are verified here too, since Pillow skips the
   IDAT checksums.
3. ``Image.open(..., formats=[sniffed])`` so only that one decoder's header parser runs (F9, UP-02).
4. Width x height and each side are checked from the header, before ``load()`` (F7, UP-01). The module also
   lowers ``Image.MAX_IMAGE_PIXELS`` and turns ``DecompressionBombWarning`` into an error inside the
   pipeline, so Pillow's own check is a second fence rather than a warning in a log.
5. Animated images and modes other than 1/L/LA/P/RGB/RGBA/CMYK/YCbCr (16-bit and float) are refused (422).
6. JPEG: ``draft("RGB", box)`` with the box taken from the aspect ratio, so libjpeg decodes a 12 MP photo at
   1/2 or 1/4 scale when the output is small (PERFORMANCE.md: a square box does not shrink a 4:3 photo).
7. ``load()`` under a guard: truncated, corrupt or hostile data becomes 422 ``image_invalid``.
8. Convert to RGB (alpha flattened onto white), downscale to the policy's long side, apply the EXIF/XMP
   orientation (``ImageOps.exif_transpose``), then copy the pixels into a NEW image with an empty ``info``
   and encode that. No EXIF, XMP, ICC, comment or text chunk can survive, and neither can anything appended
   after the image data (F8, F9, UP-03, UP-04).

Output format: always baseline JPEG (RGB, quality 88), PNG uploads included. One output type keeps serving,
watermarking and encryption simple, KYC and vehicle pictures are photographs, and a PNG re-encode of a
2000 px photo would be several times larger and slower. Colour profiles are dropped, not converted: a
Display P3 phone photo is shown slightly desaturated, which is acceptable for review and handover.

WebP is accepted, as the KYC issue asks ("only JPEG/PNG/WebP"): Android cameras and share sheets produce it.
TESTING.md UP-02 lists WebP among the refused formats; the issue's explicit list wins, and a WebP upload
goes through the same header checks (pixel flood from the VP8/VP8L header), restricted decoder and re-encode.
Animated WebP is refused like animated PNG.

Where: steps 1-2 run in the calling (web) process; steps 3-8 (``transform``), which parse the hostile bytes and
cost the memory and CPU, run in a bounded pool of decoder processes with memory, CPU and time limits
(``marketplace.imagepool``, UP-05), or inline with ``IMAGE_DECODE_MODE=inline``.

Threads: ``warnings.catch_warnings`` swaps the process-wide filter list, so two threads that overlap here
can leave the "DecompressionBombWarning is an error" filter installed after both exit. That leftover is
exactly the behaviour we want anywhere Pillow runs, so it is harmless; the header checks in step 4 do not
depend on the warning filter at all.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from math import ceil
from typing import IO, Final

from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from marketplace.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType

log = logging.getLogger(__name__)

# Register exactly the three decoders we use, so Image.open(formats=[...]) never calls Image.init(), which
# would import every other plugin.
_PLUGINS: Final = (JpegImagePlugin, PngImagePlugin, WebPImagePlugin)

# Pillow's default is 89,478,485 pixels and, above it, only a warning (the error comes at 2x: F7). No policy
# may allow more than this; Pillow's own check is the backstop behind ``ImagePolicy.max_pixels``.
PILLOW_MAX_IMAGE_PIXELS: Final = 40_000_000
Image.MAX_IMAGE_PIXELS = PILLOW_MAX_IMAGE_PIXELS

MIB: Final = 1024 * 1024
OUTPUT_FORMAT: Final = "JPEG"
OUTPUT_MIME: Final = "image/jpeg"
# Formats this module can decode. The policies choose from these.
SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")
DEFAULT_ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP")
# Pixel modes accepted from a decoder; 16-bit (I;16*, I) and float (F) modes are refused.
ALLOWED_MODES: Final = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})
_RESAMPLE: Final = Image.Resampling.BICUBIC  # Lanczos is sharper but ~20% slower on a 12 MP resize
_REDUCING_GAP: Final = 2.0
_WHITE: Final = (255, 255, 255)

_MIME_TO_FORMAT: Final[dict[str, str]] = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/png": "PNG",
    "image/x-png": "PNG",
    "image/webp": "WEBP",
}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

# Recognised formats we refuse with 415: a client sent a real file of the wrong kind. Anything that matches
# neither these nor an allowed signature is not an image at all and gets 422 image_invalid.
_FOREIGN_PREFIXES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"SIMPLE  =", "FITS"),
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"PK\x07\x08", "ZIP"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEGXL"),
    (b"\xff\x0a", "JPEGXL"),
    (b"\x1f\x8b", "GZIP"),
    (b"7z\xbc\xaf\x27\x1c", "7Z"),
    (b"Rar!\x1a\x07", "RAR"),
    (b"\x7fELF", "ELF"),
    (b"MZ", "EXE"),
    (b"qoif", "QOI"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "HDR"),
    (b"RIFF", "RIFF"),  # after the WebP check: AVI, WAV, ANI
)


class ImageTooLarge(Unprocessable):
    code = "image_too_large"
    message = "The image has too many pixels."


class ImageInvalid(Unprocessable):
    code = "image_invalid"
    message = "The file is not a valid image, or it is damaged."


class ImageTypeUnsupported(UnsupportedMediaType):
    code = "unsupported_media_type"
    message = "This image type is not accepted here."


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """Limits for one kind of upload. Input limits are checked before decoding; output is always JPEG."""

    max_bytes: int = 15 * MIB
    max_pixels: int = 40_000_000
    max_side: int = 12_000
    allowed_formats: tuple[str, ...] = DEFAULT_ALLOWED_FORMATS
    output_max_side: int = 2560
    output_quality: int = 88

    def __post_init__(self) -> None:
        unknown = set(self.allowed_formats) - set(SUPPORTED_FORMATS)
        if unknown or not self.allowed_formats:
            raise ValueError(f"allowed_formats must be a non-empty subset of {SUPPORTED_FORMATS}")
        if min(self.max_bytes, self.max_pixels, self.max_side, self.output_max_side) < 1:
            raise ValueError("limits must be positive")
        if self.max_pixels > PILLOW_MAX_IMAGE_PIXELS:
            raise ValueError(f"max_pixels may not exceed {PILLOW_MAX_IMAGE_PIXELS}")
        if not 1 <= self.output_quality <= 95:
            raise ValueError("output_quality must be between 1 and 95")


# Selfies are compared with an ID photo by a person and shown at handover: 1600 px is plenty.
SELFIE_POLICY: Final = ImagePolicy(output_max_side=1600)
# ID cards and licences must stay legible, often as a part of a larger photo.
# 2000 px keeps ID text readable for reviewers and lets a 12 MP photo decode at half size (12 MP <= 180 ms)
DOCUMENT_POLICY: Final = ImagePolicy(output_max_side=2000)
# Listing and inspection photos. 2000 px is about half of a 12 MP photo (4000 or 4032 px), so libjpeg decodes
# it at 1/2 scale and little or no resizing is left to do.
VEHICLE_PHOTO_POLICY: Final = ImagePolicy(output_max_side=2000)


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """A re-encoded image with no metadata, ready to be encrypted and stored."""

    data: bytes = field(repr=False)  # never dump image bytes into a log line
    mime: str
    width: int
    height: int
    sha256: str


def process_image(
    stream: IO[bytes], *, policy: ImagePolicy, declared_type: str | None = None
) -> ProcessedImage:
    """Validate an upload and return a fresh JPEG of its pixels, or raise an ``AppError``.

    ``declared_type`` is the client's ``Content-Type`` for the part, if any; it must match the bytes.
    """
    from marketplace.imagepool import current_decoder  # noqa: PLC0415 - imagepool imports the types defined here

    data = _read_limited(stream, policy.max_bytes)
    fmt = _sniff(data, policy=policy, declared_type=declared_type)
    return current_decoder().run(data, fmt, policy)


def transform(data: bytes, fmt: str, policy: ImagePolicy) -> ProcessedImage:
    """Steps 3-8 on bytes already read and sniffed as ``fmt``: decode, check, re-encode. This is the part
    that parses hostile data, so it normally runs in a decoder process (``marketplace.imagepool``)."""
    if fmt == "PNG":
        _check_png_chunks(data)
    with warnings.catch_warnings():
        # Pillow warns about odd metadata (corrupt EXIF, odd MPO); the metadata is dropped anyway.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        pixels = _decode(data, fmt, policy)
    return _encode(pixels, policy)


def _read_limited(stream: IO[bytes], max_bytes: int) -> bytes:
    limit = max_bytes + 1
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = stream.read(limit - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise PayloadTooLarge(details={"max_bytes": max_bytes})
    return b"".join(chunks)


def _format_of(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _foreign_format(data: bytes) -> str | None:
    for prefix, name in _FOREIGN_PREFIXES:
        if data.startswith(prefix):
            return name
    if data[4:8] == b"ftyp":
        return "ISO-BMFF"  # HEIC, HEIF, AVIF, MP4, MOV
    text = data[:512].lstrip(b"\xef\xbb\xbf\xfe\xff\x00 \t\r\n\x0b\x0c")
    if text[:1] == b"<":
        return "markup"  # HTML, SVG, XML
    return None


def _sniff(data: bytes, *, policy: ImagePolicy, declared_type: str | None) -> str:
    fmt = _format_of(data)
    if fmt is None:
        foreign = _foreign_format(data)
        if foreign is None:
            raise ImageInvalid(details={"reason": "not_an_image"})
        raise ImageTypeUnsupported(details={"detected": foreign, "allowed": list(policy.allowed_formats)})
    if fmt not in policy.allowed_formats:
        raise ImageTypeUnsupported(details={"detected": fmt, "allowed": list(policy.allowed_formats)})
    if declared_type:
        mime = declared_type.split(";", 1)[0].strip().lower()
        if _MIME_TO_FORMAT.get(mime) != fmt:
            raise ImageTypeUnsupported(details={"detected": fmt, "declared": mime[:100]})
    return fmt


def _check_png_chunks(data: bytes) -> None:
    """Walk the chunks up to IEND and verify every CRC (Pillow does not check IDAT's)."""
    pos = len(_PNG_SIGNATURE)
    first = True
    while True:
        if pos + 12 > len(data):
            raise ImageInvalid(details={"reason": "truncated"})
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise ImageInvalid(details={"reason": "truncated"})
        if first and ctype != b"IHDR":
            raise ImageInvalid(details={"reason": "no_header"})
        first = False
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise ImageInvalid(details={"reason": "bad_checksum"})
        if ctype == b"IEND":
            return
        pos = end


def _too_large(width: int, height: int, policy: ImagePolicy) -> ImageTooLarge:
    return ImageTooLarge(
        details={
            "width": width,
            "height": height,
            "max_pixels": policy.max_pixels,
            "max_side": policy.max_side,
        }
    )


def _decode(data: bytes, fmt: str, policy: ImagePolicy) -> Image.Image:
    """Header checks, then decode to an RGB or RGBA image no larger than the output size."""
    try:
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(details={"max_pixels": policy.max_pixels}) from exc
    except MemoryError as exc:
        raise ImageTooLarge(details={"max_pixels": policy.max_pixels}) from exc
    except Exception as exc:  # any failure to parse untrusted bytes is the file's fault, never a 500
        log.info("image header rejected: %s", type(exc).__name__)
        raise ImageInvalid(details={"reason": "unreadable"}) from exc

    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise ImageInvalid(details={"reason": "empty"})
        if width * height > policy.max_pixels or max(width, height) > policy.max_side:
            raise _too_large(width, height, policy)
        # MPO (a JPEG with extra pictures: depth maps, stereo) is a still photo: the first picture is used.
        if fmt != "JPEG" and getattr(im, "n_frames", 1) > 1:
            raise ImageInvalid(details={"reason": "animated"})
        if im.mode not in ALLOWED_MODES:
            raise ImageInvalid(details={"reason": "unsupported_mode"})
        try:
            return _pixels(im, fmt, policy)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
            raise _too_large(width, height, policy) from exc
        except Exception as exc:  # truncated or corrupt pixel data: OSError, SyntaxError, ValueError, ...
            log.info("image decode rejected: %s", type(exc).__name__)
            raise ImageInvalid(details={"reason": "corrupt"}) from exc


def _pixels(im: ImageFile.ImageFile, fmt: str, policy: ImagePolicy) -> Image.Image:
    target = policy.output_max_side
    width, height = im.size
    if fmt == "JPEG" and max(width, height) > target:
        # The box must keep the aspect ratio: draft() only reduces while BOTH sides stay >= the box.
        scale = target / max(width, height)
        im.draft("RGB", (max(1, ceil(width * scale)), max(1, ceil(height * scale))))
    im.load()

    work: Image.Image = im
    has_alpha = im.mode in {"RGBA", "LA", "PA"} or "transparency" in im.info
    if has_alpha:
        if im.mode != "RGBA":
            work = im.convert("RGBA")  # convert() keeps info, so the orientation is still known
    elif im.mode != "RGB":
        work = im.convert("RGB")
    # Only shrinks, keeps the aspect ratio, works in place and keeps info (the EXIF orientation).
    work.thumbnail((target, target), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    ImageOps.exif_transpose(work, in_place=True)

    # The pixels go into a NEW image whose info is empty: no EXIF, XMP, ICC, comment or text chunk can
    # ride along into the encoder (Pillow's JPEG encoder copies im.info["comment"] by default).
    clean = Image.new("RGB", work.size, _WHITE)
    if work.mode == "RGBA":
        clean.paste(work, (0, 0), work)
    else:
        clean.paste(work, (0, 0))
    return clean


def _encode(pixels: Image.Image, policy: ImagePolicy) -> ProcessedImage:
    out = io.BytesIO()
    pixels.save(out, OUTPUT_FORMAT, quality=policy.output_quality, optimize=False, progressive=False)
    data = out.getvalue()
    return ProcessedImage(
        data=data,
        mime=OUTPUT_MIME,
        width=pixels.width,
        height=pixels.height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# ---------------------------------------------------------------------------------------------------------
# Watermarking a stored image for one viewer (the handover selfie, P-18)

WATERMARK_BAND: Final = 0.22  # the share of the height the bottom band takes


def watermark(data: bytes, lines: list[str], *, quality: int = 85) -> bytes:
    """Draw ``lines`` (who, which booking, when) visibly on an image this platform stored: a dark band at
    the bottom with the lines in white, and the first line repeated faintly across the picture so a crop
    does not remove it. Input is our own re-encoded output (decoded here again, under the same pixel cap);
    the result is a JPEG without metadata."""
    with Image.open(io.BytesIO(data)) as src:
        if src.width * src.height > DOCUMENT_POLICY.max_pixels:
            raise _too_large(src.width, src.height, DOCUMENT_POLICY)
        base = src.convert("RGB")
    width, height = base.size
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    band = max(24, int(height * WATERMARK_BAND))
    size = max(10, band // (len(lines) + 1))
    font = ImageFont.load_default(size=size)
    faint = ImageFont.load_default(size=max(10, width // 18))
    step = max(40, height // 5)
    for row, y in enumerate(range(0, height - band, step)):
        draw.text(((row % 2) * width // 6, y), lines[0] if lines else "", font=faint, fill=(255, 255, 255, 70))
    draw.rectangle((0, height - band, width, height), fill=(0, 0, 0, 200))
    for i, line in enumerate(lines):
        draw.text((max(4, width // 40), height - band + size // 2 + i * size), line, font=font,
                  fill=(255, 255, 255, 255))
    out = io.BytesIO()
    Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB").save(out, OUTPUT_FORMAT, quality=quality)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Metadata inspection (used by tests and checks; never on the upload path)

_APP_SIGNATURES: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0xE1, b"Exif\x00", "EXIF"),
    (0xE1, b"http://ns.adobe.com/xap/1.0/\x00", "XMP"),
    (0xE1, b"http://ns.adobe.com/xmp/extension/\x00", "XMP"),
    (0xE2, b"ICC_PROFILE\x00", "ICC"),
    (0xE2, b"MPF\x00", "MPF"),
    (0xED, b"Photoshop 3.0\x00", "IPTC"),
    (0xEE, b"Adobe", "ADOBE"),
)
_PNG_METADATA_CHUNKS: Final[dict[bytes, str]] = {
    b"tEXt": "TEXT",
    b"zTXt": "TEXT",
    b"eXIf": "EXIF",
    b"iCCP": "ICC",
    b"tIME": "TIME",
}


def metadata_blocks(data: bytes) -> set[str]:
    """Name every metadata block in a JPEG or PNG.

    JPEG: EXIF (plus GPS when the EXIF has a GPS directory), XMP, ICC, MPF, IPTC, ADOBE, APPn for other
    APP1-APP15 segments, JFXX (an APP0 thumbnail), COM, and TRAILER for bytes after EOI. PNG: TEXT, XMP,
    EXIF, ICC, TIME and TRAILER. A clean pipeline output gives an empty set. Raises ``ValueError`` for
    anything else or for a structure it cannot walk.
    """
    if data.startswith(b"\xff\xd8"):
        return _jpeg_metadata(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_metadata(data)
    raise ValueError("not a JPEG or PNG")


def _jpeg_metadata(data: bytes) -> set[str]:
    found: set[str] = set()
    pos = 2
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at offset {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            if data[pos + 2 :].strip(b"\x00"):
                found.add("TRAILER")
            return found
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos += 2
            continue
        if pos + 4 > len(data):
            raise ValueError("truncated segment")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        payload = data[pos + 4 : pos + 2 + length]
        if marker == 0xFE:
            found.add("COM")
        elif marker == 0xE0 and payload.startswith(b"JFXX\x00"):
            found.add("JFXX")
        elif 0xE1 <= marker <= 0xEF:
            found.update(_app_names(marker, payload))
        pos += 2 + length
        if marker == 0xDA:  # SOS: skip entropy-coded data up to the next real marker
            while pos + 1 < len(data) and not (
                data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF) and not 0xD0 <= data[pos + 1] <= 0xD7
            ):
                pos += 1
    return found


def _app_names(marker: int, payload: bytes) -> set[str]:
    for app, signature, name in _APP_SIGNATURES:
        if marker == app and payload.startswith(signature):
            if name == "EXIF" and _exif_has_gps(payload[6:]):
                return {"EXIF", "GPS"}
            return {name}
    return {f"APP{marker - 0xE0}"}


def _exif_has_gps(tiff: bytes) -> bool:
    """True when IFD0 of a TIFF-structured EXIF block points to a GPS directory (tag 0x8825)."""
    if tiff[:2] == b"II":
        order = "<"
    elif tiff[:2] == b"MM":
        order = ">"
    else:
        return False
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for index in range(count):
            (tag,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * index)
            if tag == 0x8825:
                return True
    except struct.error:
        return False
    return False


def _png_metadata(data: bytes) -> set[str]:
    found: set[str] = set()
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"iTXt":
            found.add("XMP" if data[pos + 8 :].startswith(b"XML:com.adobe.xmp\x00") else "TEXT")
        elif ctype in _PNG_METADATA_CHUNKS:
            found.add(_PNG_METADATA_CHUNKS[ctype])
        pos += 12 + length
        if ctype == b"IEND":
            if data[pos:]:
                found.add("TRAILER")
            return found
    raise ValueError("PNG without IEND")
