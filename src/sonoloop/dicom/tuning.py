"""Process-wide pynetdicom settings for the DICOM node's process only.

Importing Sonoloop changes nothing in pynetdicom; the `dicomnode` command calls
:func:`node_process` once at start-up. The web workers and the task worker (which send
results and C-MOVE sub-associations as an SCU) run pynetdicom as it ships.
"""

from __future__ import annotations

import inspect
import time

from pynetdicom import _config
from pynetdicom import association as _association_module

# pynetdicom polls with 1 ms sleeps; 0.1 ms lifts single-frame ingest by ~25 % at the cost
# of ~10,000 wake-ups a second per open association (benchmarks/ingest.py).
DUL_POLL_SECONDS = 0.0001
_POLL = "time.sleep(0.001)"


class TuningError(RuntimeError):
    """The pinned pynetdicom no longer looks as the tuning expects."""


class _FasterReactorClock:
    """pynetdicom's association reactor polls its message queue with ``time.sleep(0.001)``
    (association.py, ``_run_reactor``), which costs up to 1 ms per C-STORE in a batch. Its
    module sees this clock instead: the 1 ms poll becomes DUL_POLL_SECONDS; other calls pass
    through."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(DUL_POLL_SECONDS if seconds == 0.001 else seconds)


def faster_polling() -> None:
    """Shorten the association reactor's poll; raises :class:`TuningError` when the installed
    pynetdicom no longer polls that way (the patch would silently do nothing)."""
    source = inspect.getsource(_association_module.Association._run_reactor)
    if _POLL not in source or not hasattr(_association_module, "time"):
        raise TuningError("pynetdicom's association reactor no longer polls with time.sleep(0.001): "
                          "the node's poll tuning does not apply to this version (see sonoloop.dicom.tuning)")
    _association_module.time = _FasterReactorClock()


def node_process() -> None:
    """Everything the node's process sets in pynetdicom: no identifiers (patient data) in its
    logs, and the shorter poll."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    faster_polling()
