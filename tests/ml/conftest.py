import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def camus_dir() -> Path:
    """../shared/data/camus (or SONOLOOP_CAMUS_DIR); the data never enter the repository."""
    path = Path(os.environ.get("SONOLOOP_CAMUS_DIR", REPO.parent / "shared" / "data" / "camus"))
    if not (path / "frames.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI has ../shared/data/camus, but {path} is missing")
        pytest.skip(f"the CAMUS frames are not at {path} (set SONOLOOP_CAMUS_DIR)")
    return path
