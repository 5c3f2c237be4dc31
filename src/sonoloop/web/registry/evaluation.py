"""The locked held-out set and a version's evaluation on it (a task: the model never runs
inside a request). Apps above the registry add their own scores through ``version_evaluated``."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.dispatch import Signal
from django.utils import timezone

from sonoloop.ml.data import DataError, camus_frames, select

from .models import ModelVersion
from .services import RegistryError

# sent after a version's held-out scores are stored; receivers (learning: Dice on the approved
# annotations) take (sender=ModelVersion, version=..., segmenter=...)
version_evaluated = Signal()


def original_frames() -> list:
    """The original training data (CAMUS frames or release) named by SONOLOOP_CAMUS_DIR."""
    root = settings.CONFIG.camus_dir
    if not root:
        raise RegistryError("set SONOLOOP_CAMUS_DIR to the original training data (CAMUS frames or release): "
                            "retraining mixes them in and the held-out set comes from them")
    try:
        return camus_frames(Path(root))
    except DataError as exc:
        raise RegistryError(f"SONOLOOP_CAMUS_DIR: {exc}") from None


def heldout_frames() -> list:
    """The locked held-out set: CAMUS validation patients, never trained on by retraining runs."""
    return select(original_frames(), "validation")


def version_evaluate(version: ModelVersion) -> ModelVersion:
    """Held-out Dice per structure, stored with the version (and whatever receivers add)."""
    from sonoloop.ml.evaluate import mean_dice
    from sonoloop.ml.infer import Segmenter

    segmenter = Segmenter(Path(version.folder), engine="fp32")
    heldout = mean_dice(segmenter, heldout_frames())
    ModelVersion.objects.filter(pk=version.pk).update(heldout_dice=heldout, evaluated_at=timezone.now())
    version.refresh_from_db()
    version_evaluated.send(sender=ModelVersion, version=version, segmenter=segmenter)
    version.refresh_from_db()
    return version
