"""The label maps of results (one compressed array per result, in the results file store)."""

from functools import lru_cache

import numpy as np
from django.conf import settings

from sonoloop.dicom.filestore import FileStore

from .models import AnalysisResult


@lru_cache(maxsize=1)
def results_store() -> FileStore:
    config = settings.CONFIG
    return FileStore(config.results_dir, config.tmp_dir, suffix=".npz")


def result_labels(result: AnalysisResult) -> np.ndarray:
    with np.load(results_store().path(result.labels_key)) as data:
        return data["labels"]
