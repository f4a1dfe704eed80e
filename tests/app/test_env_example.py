from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def parse(text: str) -> dict[str, tuple[str, bool]]:
    """NAME -> (value, preceded by a comment line)."""
    found, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^([A-Z0-9_]+)=(.*)$", line)
        if match:
            found[match[1]] = (match[2], i > 0 and lines[i - 1].startswith("#"))
    return found


def test_every_setting_is_in_env_example_with_a_comment():
    variables = parse(EXAMPLE.read_text())
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in variables]
    assert not missing, f"add to .env.example (with a comment): {missing}"
    undocumented = [name for name, (_, commented) in variables.items() if not commented]
    assert len(undocumented) <= 3, undocumented  # only the grouped *_API_URL lines share a comment


def test_env_example_loads_as_valid_settings(tmp_path):
    settings = Settings(_env_file=str(EXAMPLE))
    assert settings.trainer_api_key is None  # the example never ships a key
    assert settings.scrape_every_hours == 12 and settings.storage_driver == "local"
