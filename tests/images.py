"""Real image bytes for tests, drawn with Pillow: photos-like scenes, noise, patterns."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter


def scene(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A random 'photo': gradient sky, shapes, blur. Different seeds give clearly different images."""
    rng = random.Random(seed)
    w, h = size
    img = Image.new("RGB", size)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(1, h - 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (w, y)], fill=colour)
    for _ in range(rng.randrange(4, 9)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(w // 8, w // 2), y0 + rng.randrange(h // 8, h // 2)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (96, 72), quality: int = 90) -> bytes:
    return encode(scene(seed, size), "JPEG", quality=quality)


def png(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    return encode(scene(seed, size), "PNG")
