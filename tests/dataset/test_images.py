"""Validation reasons and RGB decoding, each with real bytes made by Pillow (or crafted headers)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from dataset.images import REASONS, ImageRejected, decode_rgb, inspect_image
from tests.images import encode, jpeg, noise, png, scene

LIMITS = dict(max_bytes=5_000_000, min_side=16, max_pixels=50_000_000)


def reject_reason(data: bytes, **limits) -> str:
    with pytest.raises(ImageRejected) as info:
        inspect_image(data, **{**LIMITS, **limits})
    assert info.value.reason in REASONS
    assert info.value.message  # always something a person can act on
    return info.value.reason


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: decoding it would allocate gigabytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_accepts_jpeg_png_webp_with_extension_from_the_real_format():
    cases = [
        (jpeg(1), "JPEG", "jpg"),
        (png(1), "PNG", "png"),
        (encode(scene(1), "WEBP"), "WEBP", "webp"),
        (encode(scene(1), "GIF"), "GIF", "gif"),
    ]
    for data, fmt, ext in cases:
        info = inspect_image(data, **LIMITS)
        assert (info.format, info.ext, info.width, info.height) == (fmt, ext, 96, 72)
        assert len(info.sha256) == 64 and 0 <= info.phash < 2**64


def test_hashes_are_stable_and_distinguish_images():
    a, b = inspect_image(jpeg(1), **LIMITS), inspect_image(jpeg(1), **LIMITS)
    assert a == b
    other = inspect_image(jpeg(2), **LIMITS)
    assert other.sha256 != a.sha256 and bin(other.phash ^ a.phash).count("1") > 10


@pytest.mark.parametrize("data", [b"", b"hello, this is text", b"GIF89a"])
def test_not_an_image(data):
    assert reject_reason(data) == "not_an_image"


@pytest.mark.parametrize("maker", [lambda: jpeg(3, (300, 200)), lambda: png(3, (300, 200))])
def test_truncated(maker):
    data = maker()
    assert reject_reason(data[: len(data) // 2]) == "truncated"


def test_corrupt_data_of_full_length_is_truncated():
    data = bytearray(png(3, (300, 200)))
    start = data.find(b"IDAT") + 40
    data[start : start + 40] = bytes(b ^ 0xFF for b in data[start : start + 40])  # garbled, nothing cut
    assert reject_reason(bytes(data)) == "truncated"


def test_decompression_bomb_over_the_configured_limit_is_rejected_before_decoding():
    assert reject_reason(png(1, (100, 100)), max_pixels=5_000) == "decompression_bomb"
    # 30000 x 30000 declared, 90 bytes of data: must be refused from the header alone.
    assert reject_reason(png_declaring(30_000, 30_000), max_pixels=10**12) == "decompression_bomb"


def test_pillow_bomb_warning_becomes_a_rejection():
    # 10000 x 10000 is above Pillow's MAX_IMAGE_PIXELS (warning zone) but under our max_pixels here.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10_000**2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in production: the rejection must not rely on pytest's filters
        assert reject_reason(png_declaring(10_000, 10_000), max_pixels=10**9) == "decompression_bomb"


def test_too_small():
    assert reject_reason(jpeg(1, (40, 10)), min_side=16) == "too_small"


def test_too_large():
    data = jpeg(1)
    assert reject_reason(data, max_bytes=len(data) - 1) == "too_large"
    assert inspect_image(data, **{**LIMITS, "max_bytes": len(data)}).ext == "jpg"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated(fmt):
    frames = [scene(1), scene(2), scene(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    assert reject_reason(buf.getvalue()) == "animated"


def test_unsupported_formats():
    assert reject_reason(encode(scene(1), "PCX")) == "unsupported_format"
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0mif1heic" + b"\0" * 64
    assert reject_reason(heic) == "unsupported_format"


def test_exif_orientation_is_applied_before_hashing():
    upright = scene(5, (120, 80))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes: pixels sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tagged = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    untagged = encode(stored, "JPEG", quality=95)
    base = inspect_image(encode(upright, "JPEG", quality=95), **LIMITS).phash
    assert decode_rgb(tagged).size == (120, 80)
    assert bin(inspect_image(tagged, **LIMITS).phash ^ base).count("1") <= 4
    assert bin(inspect_image(untagged, **LIMITS).phash ^ base).count("1") > 10


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (0, 0, 16, 32))  # opaque blue left half
    rgb = decode_rgb(encode(img, "PNG"))
    assert rgb.mode == "RGB"
    assert rgb.getpixel((24, 10)) == (255, 255, 255)
    assert rgb.getpixel((4, 10)) == (0, 0, 255)


def test_palette_with_transparency_and_cmyk_become_rgb():
    pal = scene(1).convert("P")
    pal.info["transparency"] = 0
    assert decode_rgb(encode(pal, "PNG")).mode == "RGB"
    cmyk = decode_rgb(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((5, 5))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60  # cyan/magenta/yellow ink -> red


def test_16_bit_grey_is_scaled_not_clipped():
    arr = np.full((32, 32), 30_000, dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    rgb = decode_rgb(data)
    assert rgb.mode == "RGB"
    assert abs(rgb.getpixel((3, 3))[0] - 30_000 * 255 / 65_535) <= 1.5  # ~117, not 255
    assert inspect_image(data, **LIMITS).format == "PNG"


@pytest.mark.parametrize("seed", range(6))
def test_phash_int_is_imagehashs_bits_read_as_one_number(seed):
    import imagehash

    from dataset.images import phash_int

    img = scene(seed, (160, 120))
    bits = imagehash.phash(img).hash.flatten()  # row by row; the first bit is the most significant
    assert phash_int(img) == int("".join("1" if b else "0" for b in bits), 2)
    assert f"{phash_int(img):016x}" == str(imagehash.phash(img))  # imagehash's own hex spelling


def _with_exif(fmt: str, exif: bool) -> bytes:
    img = scene(3, (48, 40))
    tags = Image.Exif()
    tags[0x0110] = "Model X"  # camera model
    out = io.BytesIO()
    img.save(out, format=fmt, **({"exif": tags} if exif else {}))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_has_exif_finds_the_block_each_container_carries(fmt):
    from dataset.facts import has_exif

    assert has_exif(_with_exif(fmt, exif=True)) is True
    assert has_exif(_with_exif(fmt, exif=False)) is False


def _jpeg_segments(data: bytes, *segments: bytes) -> bytes:
    """``data`` (a JPEG) with ``segments`` (marker + length + body) inserted right after SOI."""
    return data[:2] + b"".join(segments) + data[2:]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def test_has_exif_walks_a_jpegs_segments_past_the_first_64_kb():
    from dataset.facts import has_exif

    plain = _with_exif("JPEG", exif=False)
    big_icc = _segment(0xE2, b"ICC_PROFILE\x00" + bytes(65000))
    exif = _segment(0xE1, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    # an EXIF segment after a 65 KB profile: found (a scan of the first 64 KB would miss it)
    assert has_exif(_jpeg_segments(plain, big_icc, exif)) is True
    # fill bytes before a marker are skipped
    assert has_exif(_jpeg_segments(plain, b"\xff\xff", exif)) is True
    # "Exif" spelled in a comment or in XMP is not an EXIF block
    comment = _segment(0xFE, b"edited; EXIF removed; Exif\x00\x00 eXIf")
    xmp = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta exif:Make='EXIF'/>")
    assert has_exif(_jpeg_segments(plain, comment, xmp)) is False
    # an APP1 that only comes after the first scan (inside the image data) does not count
    assert has_exif(plain + exif) is False


def test_has_exif_walks_png_and_webp_chunks():
    from dataset.facts import has_exif

    png_plain = _with_exif("PNG", exif=False)
    text = b"tEXt" + b"Comment\x00EXIF eXIf Exif\x00\x00"
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    assert has_exif(png_plain[:33] + chunk + png_plain[33:]) is False  # the names only as text
    exif_chunk = struct.pack(">I", 4) + b"eXIfMM\x00*" + struct.pack(">I", zlib.crc32(b"eXIfMM\x00*"))
    assert has_exif(png_plain[:-12] + exif_chunk + png_plain[-12:]) is True  # after the image data
    webp = _with_exif("WEBP", exif=True)
    assert webp[12:16] == b"VP8X" and has_exif(webp) is True  # EXIF follows the image data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",  # a JPEG cut after SOI
        b"\xff\xd8\xff\xe1\x00\x10Exif",  # cut inside the segment
        b"\xff\xd8\xff\xfe\xff\xffExif\x00\x00",  # a comment whose length runs past the end
        b"\x89PNG\r\n\x1a\n\x00\x00",  # a PNG cut inside a chunk header
        b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffIDAT",  # a chunk longer than the file
        b"RIFF\x10\x00\x00\x00WEBPVP8 \xff\xff\xff\xff",
    ],
)
def test_has_exif_on_cut_or_broken_headers_says_no_and_never_raises(data):
    from dataset.facts import has_exif

    assert has_exif(data) is False


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\x00\x00Exif\x00\x00", True),  # a JPEG whose segments cannot be walked
        (b"GIF89a....EXIF", True),  # another container
        (b"ftypheic" + b"x" * 100 + b"Exif\x00\x00", True),
        (b"xmlns:exif='...' exif EXIf Exif\x00 eXif", False),  # lower-case and near misses only
        (b"exif" * 5000 + b"EXIF", True),  # many candidates before the real one
        (b"x" * (2**16 - 6) + b"Exif\x00\x00", True),  # ends exactly at the limit
        (b"x" * (2**16 - 5) + b"Exif\x00\x00", False),  # one byte past it
    ],
)
def test_has_exif_falls_back_to_the_names_in_the_first_64_kb(data, expected):
    from dataset.facts import has_exif

    assert has_exif(data) is expected


# --- PNG: the plain case is decoded by libspng (imagecodecs), every other PNG by Pillow ---


def _chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, length) of each chunk of a PNG."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((kind, pos, length))
        pos += 12 + length
    return out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _insert_before(data: bytes, kind: bytes, extra: bytes) -> bytes:
    at = next(offset for name, offset, _ in _chunks(data) if name == kind)
    return data[:at] + extra + data[at:]


def _outcome(data: bytes) -> tuple:
    """What inspect_image makes of the bytes: the reason of a rejection, or the image's facts."""
    try:
        info = inspect_image(data, **LIMITS)
    except ImageRejected as exc:
        return ("rejected", exc.reason)
    return ("ok", info.format, info.width, info.height, info.phash)


@pytest.fixture
def spng_calls(monkeypatch) -> list[int]:
    """Counts the calls into libspng (each goes through to the real decoder)."""
    import imagecodecs

    calls: list[int] = []
    real = imagecodecs.spng_decode

    def counted(data, *args, **kwargs):
        calls.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(imagecodecs, "spng_decode", counted)
    return calls


def _pillow_alone(monkeypatch, data: bytes) -> tuple:
    """The outcome with the libspng path switched off: the Pillow-only reference."""
    with monkeypatch.context() as m:
        m.setattr("dataset.images._plain_png", lambda img, data: False)
        return _outcome(data)


def _pillow_pixels(monkeypatch, data: bytes) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr("dataset.images._plain_png", lambda img, data: False)
        return np.asarray(decode_rgb(data))


def _tagged_sideways(mode: str) -> bytes:
    upright = scene(8, (150, 100)).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; EXIF says turn it to display
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif.tobytes())


def _split_image_data(data: bytes, parts: int = 5) -> bytes:
    """The same PNG with its image data spread over several IDAT chunks, as libpng writes it."""
    _, offset, length = next(c for c in _chunks(data) if c[0] == b"IDAT")
    body = data[offset + 8 : offset + 8 + length]
    step = -(-len(body) // parts)
    idats = b"".join(_chunk(b"IDAT", body[i : i + step]) for i in range(0, len(body), step))
    return data[:offset] + idats + data[offset + 12 + length :]


def _png_by_hand(array: np.ndarray, color_type: int, bit_depth: int, interlace: bool = False) -> bytes:
    """A PNG Pillow cannot write (16-bit colour, Adam7), its scanlines filtered (none) by hand."""
    height, width = array.shape[:2]
    if interlace:  # Adam7's seven passes: first column, first row, column step, row step
        passes = [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ]
    else:
        passes = [(0, 0, 1, 1)]
    raw = b"".join(
        b"\0" + array[y, x0::dx].tobytes() for x0, y0, dx, dy in passes for y in range(y0, height, dy)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlace))
    chunks = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _frame_control(width: int, height: int) -> bytes:
    """An APNG frame control chunk without the animation chunk (Pillow then decodes into its box)."""
    return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 10, 0, 0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: png(4, (300, 200)),
        lambda: encode(scene(5, (256, 160)).convert("RGBA"), "PNG"),
        lambda: encode(noise(6, (97, 131)), "PNG", compress_level=9),
        lambda: _tagged_sideways("RGB"),
        lambda: _tagged_sideways("RGBA"),
        lambda: _split_image_data(png(7, (200, 120))),
        lambda: png(4, (300, 200))[:-12],  # no IEND: Pillow accepts it
    ],
    ids=["rgb", "rgba", "noise-odd-size", "rgb-exif-rotated", "rgba-exif-rotated", "split-idat", "no-iend"],
)
def test_plain_png_is_decoded_by_libspng_with_pillows_pixels_and_hash(make, monkeypatch, spng_calls):
    data = make()
    pixels = np.asarray(decode_rgb(data))
    assert len(spng_calls) == 1  # this case took libspng
    assert np.array_equal(pixels, _pillow_pixels(monkeypatch, data))
    assert _outcome(data) == _pillow_alone(monkeypatch, data)
    if b"eXIf" in data:
        assert pixels.shape[:2] == (100, 150)  # the EXIF read with the header still turns it upright


def _with_text_after_image_data(data: bytes) -> bytes:
    return _insert_before(data, b"IEND", _chunk(b"tEXt", b"Comment\0after the pixels"))


def _with_exif_after_image_data() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 3  # upside down
    return _insert_before(png(9, (120, 80)), b"IEND", _chunk(b"eXIf", exif.tobytes()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(scene(1).convert("P"), "PNG"),
        lambda: encode(scene(2).convert("L"), "PNG"),
        lambda: _png_by_hand(np.asarray(scene(3, (40, 24))), color_type=2, bit_depth=8, interlace=True),
        lambda: _png_by_hand(np.asarray(scene(3, (40, 24))).astype(">u2") * 257, color_type=2, bit_depth=16),
        lambda: _with_text_after_image_data(png(4)),
        lambda: _with_exif_after_image_data(),
        lambda: encode(scene(7, (48, 32)), "PNG", transparency=scene(7, (48, 32)).getpixel((0, 0))),
        lambda: _insert_before(png(5, (120, 80)), b"IDAT", _frame_control(120, 40)),  # decodes into the box
        lambda: _insert_before(png(5, (120, 80)), b"IDAT", _frame_control(0, 0)),  # Pillow rejects this
        lambda: _insert_before(png(5, (120, 80)), b"IDAT", _chunk(b"ABCD", b"x")),  # unknown critical
    ],
    ids=[
        "palette", "grey", "interlaced", "rgb-16-bit", "text-after-idat", "exif-after-idat", "trns-key",
        "fctl-half", "fctl-empty", "unknown-critical",
    ],
)  # fmt: skip
def test_other_pngs_are_decoded_by_pillow_alone(make, monkeypatch, spng_calls):
    data = make()
    assert _outcome(data) == _pillow_alone(monkeypatch, data)
    assert spng_calls == []


def test_plain_png_cut_after_its_image_data_is_judged_by_pillow(monkeypatch):
    """tricky/truncated_corrupt/truncated_end_chunk.png: all the pixels, then a chunk whose body is
    missing. libspng stops where the image data ends and would take it; Pillow rejects it."""
    data = png(4, (300, 200))
    image_data = data[: data.rindex(b"IEND") - 4]
    cut = image_data + struct.pack(">I", 5000) + b"IDAT" + bytes(100)
    assert reject_reason(cut) == "truncated"
    for ending in (data[:-4], data[:-1], image_data + b"\0\0\0"):  # what Pillow lets through
        assert _outcome(ending) == _pillow_alone(monkeypatch, ending)


def test_png_verdicts_are_pillows_on_damaged_files(monkeypatch):
    """Cut, flipped and spliced copies of plain PNGs: the same verdict, size and pHash as Pillow
    alone, whichever decoder ran. (A review's fuzzing found an fcTL chunk and cut tails differing.)"""
    rng = np.random.default_rng(20261130)
    originals = [
        png(11, (64, 48)),
        encode(scene(12, (72, 40)).convert("RGBA"), "PNG"),
        _split_image_data(png(13)),
    ]
    extras = [_chunk(b"tEXt", b"k\0v"), _frame_control(32, 16), _chunk(b"ABCD", b""), _chunk(b"IEND", b"")]
    differing, rejected = [], 0
    for k in range(240):
        data = bytearray(originals[k % len(originals)])
        kind = k % 4
        if kind == 0:  # cut anywhere after the header
            del data[int(rng.integers(33, len(data))) :]
        elif kind == 1:  # one byte flipped anywhere after the signature
            data[int(rng.integers(8, len(data)))] ^= int(rng.integers(1, 256))
        elif kind == 2:  # a chunk spliced in at a chunk boundary
            at = [offset for _n, offset, _l in _chunks(bytes(data))][int(rng.integers(1, 3))]
            data[at:at] = extras[int(rng.integers(len(extras)))]
        else:  # stray bytes after the end
            data += rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        got = _outcome(bytes(data))
        rejected += got[0] == "rejected"
        if got != _pillow_alone(monkeypatch, bytes(data)):
            differing.append((k, got))
    assert differing == []
    assert 30 < rejected < 200  # the mutations reach both verdicts
