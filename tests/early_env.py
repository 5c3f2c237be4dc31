"""Loaded with `-p tests.early_env` before pytest-django reads the settings: in-process Django
keeps its files in a throw-away folder and never touches ./sonoloop-data."""

import os
import tempfile

os.environ["SONOLOOP_DATA_DIR"] = tempfile.mkdtemp(prefix="sonoloop-test-")
os.environ.pop("DATABASE_URL", None)
