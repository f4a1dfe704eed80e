"""The trainer's exception tree, written down once.

- ``TrainingError``: a training that cannot run or finish; the message tells a person what was
  wrong and what to do (too few samples, pretrained weights unavailable, bad architecture ...).
- ``ModelNotFound`` (also a ``LookupError``): no promoted model, or the asked-for version or its
  files are missing.
"""

from __future__ import annotations


class TrainingError(Exception):
    """A training job that cannot run or finish; str(exc) is meant for a person."""


class ModelNotFound(LookupError):
    """No model to serve or predict with: nothing promoted yet, or the version/files are missing."""
