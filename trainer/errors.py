"""The training and registry branches of the exception tree (drawn in config/errors.py).

- ``TrainingError``: a training that cannot run or finish; the message tells a person what was
  wrong and what to do (too few samples, pretrained weights unavailable, bad architecture ...).
  ``EntryMismatch`` (also a ``ValueError``): a training-cache entry that is not its picture's;
  ``BenchmarkError``: the frozen benchmark (EVAL_BENCHMARK_DIR) is not set or not usable.
- ``RegistryError``: the model registry and the versions' files.
  ``ModelNotFound`` (also a ``LookupError``): no promoted model, or the asked-for version or its
  files are missing; ``ArtifactMissing`` (also a ``LookupError``): a registered version's file is
  not where it should be; ``RegistryConflict``: the shared registry changed under a write;
  ``AliasError``: an alias move refused, ``status`` is the HTTP answer.
"""

from __future__ import annotations

from config.errors import ExposrError


class TrainingError(ExposrError):
    """A training job that cannot run or finish; str(exc) is meant for a person."""


class BenchmarkError(TrainingError):
    """The frozen benchmark (EVAL_BENCHMARK_DIR) is not set or not usable; the message says which."""


class EntryMismatch(TrainingError, ValueError):
    """A cache entry that is not what its original gave (the message says how it differs)."""


class RegistryError(ExposrError):
    """The model registry or a version's files: the message says which and what to do."""


class ModelNotFound(RegistryError, LookupError):
    """No model to serve or predict with: nothing promoted yet, or the version/files are missing."""


class ArtifactMissing(RegistryError, LookupError):
    """Registered, but the file is not where it should be (message names where)."""


class RegistryConflict(RegistryError):
    """Another host published to the shared registry since this host read it."""


class AliasError(RegistryError):
    """An alias change that cannot be made; ``status`` is the HTTP answer (404, 409, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
