"""TRAIN_ARCH is checked without importing torch, against the same names timm registers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.architectures import check_architecture, known_architectures
from trainer.errors import TrainingError


def test_the_fast_list_is_exactly_timms_own():
    import timm

    assert known_architectures() == frozenset(timm.list_models())


def test_unknown_names_are_refused_with_close_matches_and_tags_and_hub_names_pass():
    for good in ("resnet10t", "vit_small_patch16_224", "resnet50.a1_in1k", "hf-hub:org/model"):
        check_architecture(good)
    with pytest.raises(
        TrainingError, match=r"TRAIN_ARCH='resnet10' is not a timm architecture; did you mean 'resnet10t'"
    ):
        check_architecture("resnet10")
    with pytest.raises(TrainingError, match="not_a_model"):
        check_architecture("not_a_model")


def test_the_check_imports_no_torch():
    code = (
        "import sys; from trainer.architectures import check_architecture; "
        "check_architecture('resnet10t'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
