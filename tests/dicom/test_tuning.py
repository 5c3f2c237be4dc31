"""The node's pynetdicom tuning: applied by the `dicomnode` command only, checked against the
installed pynetdicom, and absent from every other process."""

import subprocess
import sys

import pytest

from sonoloop.dicom import tuning


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_the_node_and_the_archive_changes_nothing_in_pynetdicom():
    out = _run(
        "import os, time; os.environ['DJANGO_SETTINGS_MODULE'] = 'sonoloop.web.settings'\n"
        "import django; django.setup()\n"
        "from pynetdicom import _config, association\n"
        "import sonoloop.dicom.node, sonoloop.dicom.send, sonoloop.web.archive.dicom_archive\n"
        "print(association.time is time, _config.LOG_REQUEST_IDENTIFIERS, _config.STORE_RECV_CHUNKED_DATASET)")
    assert out.splitlines()[-1] == "True True False"


def test_the_node_process_tuning_takes_effect_on_the_installed_pynetdicom():
    out = _run(
        "import time\n"
        "from pynetdicom import _config, association\n"
        "from sonoloop.dicom import tuning\n"
        "tuning.node_process()\n"
        "slept = []\n"
        "time.sleep = slept.append\n"
        "association.time.sleep(0.001); association.time.sleep(0.5)\n"
        "print(slept == [tuning.DUL_POLL_SECONDS, 0.5], association.time.monotonic is time.monotonic,"
        " _config.LOG_REQUEST_IDENTIFIERS)")
    assert out == "True True False"


def test_a_pynetdicom_that_no_longer_polls_that_way_is_reported_not_patched(monkeypatch):
    from pynetdicom import association

    before = association.time
    monkeypatch.setattr(tuning.inspect, "getsource", lambda obj: "def _run_reactor(self):\n    self._loop()\n")
    with pytest.raises(tuning.TuningError, match="no longer polls"):
        tuning.faster_polling()
    assert association.time is before
