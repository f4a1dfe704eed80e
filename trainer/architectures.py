"""Which names TRAIN_ARCH may take, known in milliseconds and without importing torch.

``timm.is_model`` needs ``import timm``, which imports torch: seconds before a typo is caught, and
after the command has already started. timm registers an architecture with ``@register_model`` on
a function of that name in ``timm/models/*.py``; reading those files for the decorated names gives
the same set as ``timm.list_models()`` (tests/trainer/test_architectures.py compares them) in about
60 ms. A pretrained tag (``resnet50.a1_in1k``) names its architecture before the dot; a hub name
(``hf-hub:...``) is left for timm to resolve when the model is built.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from pathlib import Path

from trainer.errors import TrainingError

_REGISTERED = re.compile(rb"@register_model\s*\ndef\s+([A-Za-z0-9_]+)\s*\(")
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


@functools.lru_cache(maxsize=1)
def known_architectures() -> frozenset[str]:
    """Every architecture name timm registers (empty when timm is not installed)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    names: set[str] = set()
    for path in models.glob("*.py"):
        names.update(name.decode() for name in _REGISTERED.findall(path.read_bytes()))
    return frozenset(names)


def check_architecture(name: str, setting: str = "TRAIN_ARCH") -> None:
    """TrainingError naming ``setting`` and the closest names when ``name`` is not a timm model."""
    if name.startswith(HUB_PREFIXES):
        return
    known = known_architectures()
    if not known or name.split(".", 1)[0] in known:
        return
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise TrainingError(
        f"{setting}={name!r} is not a timm architecture; {hint}e.g. 'resnet10t' (small, CPU) or "
        "'vit_small_patch16_224' (the default); `python -c \"import timm; print(timm.list_models())\"` "
        "lists them all"
    )
