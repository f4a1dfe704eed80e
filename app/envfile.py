"""Prepare ``.env`` on a fresh machine: copy ``.env.example`` with a freshly generated API key.

``python -m app.envfile .env`` (called by ``make run``) does nothing when the file exists, so an
operator's settings and key are never overwritten. The new key is printed once, for the operator
to hand to Exposr-Core; it is not written anywhere else.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path

_KEY_LINE = re.compile(r"^TRAINER_API_KEY=.*$", re.MULTILINE)


def render_env(example: str, api_key: str) -> str:
    """The example's text with TRAINER_API_KEY set to ``api_key`` (appended if the line is missing)."""
    if _KEY_LINE.search(example):
        return _KEY_LINE.sub(lambda _: f"TRAINER_API_KEY={api_key}", example, count=1)
    return example.rstrip("\n") + f"\nTRAINER_API_KEY={api_key}\n"


def prepare_env(target: Path, example: Path) -> str | None:
    """Create ``target`` from ``example`` with a new key; return the key, or None if target exists."""
    if target.exists():
        return None
    text = example.read_text(encoding="utf-8") if example.exists() else ""
    api_key = secrets.token_urlsafe(32)
    # O_EXCL: two concurrent `make run`s cannot both write (and print different keys).
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(render_env(text, api_key))
    return api_key


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else ".env")
    example = Path(args[1]) if len(args) > 1 else target.with_name(".env.example")
    try:
        api_key = prepare_env(target, example)
    except FileExistsError:
        return 0
    except OSError as exc:
        print(f"cannot write {target}: {exc}", file=sys.stderr)
        return 1
    if api_key is None:
        print(f"{target} exists; keeping it.")
    else:
        print(f"Created {target} from {example} with a new TRAINER_API_KEY (shown once, keep it safe):")
        print(f"  {api_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
