"""Names that people type and the dataset stores: generator names (sources.yaml, uploads, settings).

A generator name ends up in the index, in reports, in JSON keys and on the console: it must be
short, printable and free of anything a shell, a path or an HTML page would treat specially.
"""

from __future__ import annotations

import re

GENERATOR_MAX = 64
_GENERATOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+()/:-]*$")


def clean_generator(value: object) -> str:
    """The generator name, stripped; ValueError saying what is allowed when it is not a usable name."""
    if not isinstance(value, str):
        raise ValueError(f"a generator name must be text, got {type(value).__name__}")
    name = " ".join(value.split())
    if not name:
        raise ValueError("a generator name must not be empty")
    if len(name) > GENERATOR_MAX:
        raise ValueError(f"generator name {name[:20]!r}... is longer than {GENERATOR_MAX} characters")
    if not _GENERATOR_RE.match(name):
        raise ValueError(
            f"generator name {name!r} has characters other than letters, digits, space "
            "and . _ + ( ) / : - (or does not start with a letter or digit)"
        )
    return name


def sanitize_generator(value: object) -> str | None:
    """A generator name from an API answer (CivitAI's baseModel): cleaned to the same alphabet, never
    an error; None when nothing usable is left."""
    if not isinstance(value, str):
        return None
    kept = re.sub(r"[^A-Za-z0-9 ._+()/:-]", "", " ".join(value.split())).strip(" ._+()/:-")
    return kept[:GENERATOR_MAX] or None
