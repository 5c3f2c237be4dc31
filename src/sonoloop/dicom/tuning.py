"""Process-wide pynetdicom settings for the DICOM node's process only.

Importing Sonoloop changes nothing in pynetdicom; the `dicomnode` command calls
:func:`node_process` once at start-up. The web workers and the task worker (which send
results and C-MOVE sub-associations as an SCU) run pynetdicom as it ships.

pynetdicom runs two threads per association that poll: the DUL thread sleeps 1 ms between
looks at its socket and its send queue, and the association's reactor sleeps 1 ms between
looks at its message queue. Shorter sleeps lower the latency of a C-STORE but cost wake-ups:
the node used to poll every 0.1 ms, and then each open association took ~30 % of a core while
it sat idle (ten idle associations from a modality's pool: three cores), and ~2 ms of CPU per
single-frame C-STORE went to polling. Here both threads wait instead, and wake when there is
something to do:

- the DUL thread in ``select()`` on its socket and on a pipe that its association writes a
  byte to whenever it queues a PDU to send (or stops the thread);
- the reactor on an event that is set when a whole DIMSE message has arrived, when the DUL
  thread passes the association anything else (a release or abort from the peer), and when
  another thread pauses the reactor to send a message itself.

Both also wake every :data:`IDLE_WAIT_SECONDS` to check what pynetdicom checks on a timer
(the ARTIM and network timeouts, a DUL thread that died).

The DUL thread also reads each PDU with a few large reads into one buffer (pynetdicom reads
4 KB at a time: ~120 reads for a 486 KB image) and, on an established association that has a
:class:`~sonoloop.dicom.storelane.StoreLane` (the node gives one to peers that may store),
offers it each P-DATA-TF PDU first: the lane answers plain C-STORE requests itself and hands
everything else back to pynetdicom's own decoding, unchanged.

One setting is the interpreter's, not pynetdicom's: how soon a thread that wants the GIL gets
it (:data:`GIL_SWITCH_INTERVAL_SECONDS`).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import queue
import select
import struct
import sys
import threading
import time

from pynetdicom import _config
from pynetdicom import association as _association_module
from pynetdicom import dimse as _dimse_module
from pynetdicom import dul as _dul_module
from pynetdicom.dul import DULServiceProvider

from .reactor import keep_responses
from .storelane import Abort, Pass, Send

log = logging.getLogger("sonoloop.dicom")

# The longest an idle association's threads wait before they look at their timers again.
IDLE_WAIT_SECONDS = 0.05

# How long a thread running Python keeps the GIL while another thread waits for it. Python's
# default (5 ms) is longer than a whole single-frame C-STORE: the archive's writer thread needs
# the GIL for microseconds between the system calls that write, fsync and rename the file, and
# waited each time for the association's thread to finish parsing the data set. The file's
# write began ~2.8 ms after the store did, and the reply waited for its fsync (cycle per frame
# 9.4 → 6.7–8.3 ms with this; see the ingest benchmark in the README).
GIL_SWITCH_INTERVAL_SECONDS = 0.0002

# what the patches rely on in pynetdicom's source (checked before anything is patched)
_EXPECTED = (
    (_association_module.Association._run_reactor, "time.sleep(0.001)"),
    (DULServiceProvider.run_reactor, "time.sleep(self._run_loop_delay)"),
    (DULServiceProvider.send_pdu, "self.to_provider_queue.put(primitive)"),
    (DULServiceProvider.stop_dul, "self._kill_thread = True"),
    (_dimse_module.DIMSEServiceProvider.receive_primitive, "self.msg_queue.put("),
    (DULServiceProvider.__init__, "self.to_user_queue: \"queue.Queue[_UserQueuePrimitives]\" = queue.Queue()"),
)

# _read_pdu_data is replaced whole (see _lane_read_pdu_data): the source it replaces, pinned
_ORIGINAL_READ_PDU_DATA = DULServiceProvider._read_pdu_data
_READ_PDU_DATA_SHA256 = "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"


class TuningError(RuntimeError):
    """The pinned pynetdicom no longer looks as the tuning expects."""


class _Wakeup:
    """A non-blocking pipe: other threads write a byte to wake a DUL thread waiting in select()."""

    def __init__(self):
        self._lock = threading.Lock()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        with self._lock:  # never write to a closed (and possibly reused) descriptor
            if self._write is None:
                return
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def wait(self, sock, timeout: float) -> None:
        """Until ``sock`` is readable, :meth:`set` is called, or ``timeout`` passes. Only the
        thread that owns this object waits on it and closes it."""
        readable, _, _ = select.select([sock, self._read], [], [], timeout)
        if self._read in readable:
            try:
                while os.read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        with self._lock:
            descriptors, self._read, self._write = (self._read, self._write), None, None
        for fd in descriptors:
            if fd is not None:
                os.close(fd)


class _Clock:
    """Stands in for the ``time`` module in one pynetdicom module: everything but ``sleep``
    passes through."""

    def __getattr__(self, name):
        return getattr(time, name)


class _DulClock(_Clock):
    """What pynetdicom's ``dul`` module sees as ``time``: in a DUL thread with a connected
    socket and nothing to send, ``sleep`` waits for the socket or a wake-up instead; every
    other call passes through (``stop_dul`` sleeps in the caller's thread)."""

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = threading.current_thread()
        wakeup = getattr(dul, "_sonoloop_wakeup", None)
        sock = getattr(getattr(dul, "socket", None), "socket", None)
        if wakeup is None or sock is None or dul._kill_thread or not dul.to_provider_queue.empty():
            time.sleep(seconds)
            return
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted and buffered
        if pending is not None and pending():
            return
        try:
            wakeup.wait(sock, IDLE_WAIT_SECONDS)
        except (OSError, ValueError):  # the socket was closed meanwhile: the loop sees it
            time.sleep(seconds)


class _ReactorClock(_Clock):
    """What pynetdicom's ``association`` module sees as ``time``: the reactor's 1 ms poll
    becomes a wait for its association's activity (:func:`_watch`); every other call passes
    through (a thread pausing the reactor sleeps 0.1 ms between looks)."""

    @staticmethod
    def sleep(seconds: float) -> None:
        assoc = threading.current_thread()
        activity = getattr(assoc, "_sonoloop_activity", None)
        if seconds != 0.001 or activity is None:
            time.sleep(seconds)
            return
        activity.clear()  # cleared before looking: anything after it sets it again
        if assoc.dimse.msg_queue.empty() and assoc.dul.to_user_queue.empty() and assoc._reactor_checkpoint.is_set():
            activity.wait(IDLE_WAIT_SECONDS)


class _SignallingQueue(queue.Queue):
    """An association's message queue, or its DUL's queue to it (A-RELEASE, A-ABORT): each put
    also sets the association's activity event. (The reactor must not wait on the queue's own
    condition: ``put`` notifies only one waiter, and a thread blocked in ``get`` would miss it.)"""

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._sonoloop_activity.set()


class _SignallingCheckpoint(threading.Event):
    """The reactor's checkpoint: a thread that clears it to pause the reactor (to send a
    message itself) then waits for the reactor to get there; this wakes the reactor at once."""

    def clear(self) -> None:
        super().clear()
        self._sonoloop_activity.set()


def _watch(assoc) -> None:
    """Give ``assoc`` the event its reactor waits on, set by everything the reactor acts on."""
    dimse, dul = getattr(assoc, "dimse", None), getattr(assoc, "dul", None)
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if (dimse is None or dul is None or type(dimse.msg_queue) is not queue.Queue
            or type(dul.to_user_queue) is not queue.Queue or type(checkpoint) is not threading.Event):
        return  # not as expected (or watched already): this reactor polls as shipped
    activity = threading.Event()
    for watched, kind in ((dimse.msg_queue, _SignallingQueue), (dul.to_user_queue, _SignallingQueue),
                          (checkpoint, _SignallingCheckpoint)):
        watched._sonoloop_activity = activity
        watched.__class__ = kind
    assoc._sonoloop_activity = activity


def _recv_into(sock, view: memoryview) -> int:
    """Fill ``view`` from ``sock``; the number of bytes read (fewer: the peer closed)."""
    filled = 0
    while filled < len(view):
        got = sock.recv_into(view[filled:])
        if not got:
            break
        filled += got
    return filled


# Memory is taken for a PDU's body as its bytes arrive, in steps of at most this many bytes: a
# peer that declares a 4 GB PDU and sends nothing costs nothing.
_READ_STEP = 4 * 1024 * 1024


def _recv_pdu_body(sock, bytestream: bytearray, length: int) -> int:
    """Append ``length`` bytes from ``sock`` to ``bytestream``; the number read (fewer: closed)."""
    read = 0
    while read < length:
        step = min(length - read, _READ_STEP)
        start = len(bytestream)
        bytestream += bytes(step)
        with memoryview(bytestream) as view, view[start:] as part:
            got = _recv_into(sock, part)
        read += got
        if got < step:
            del bytestream[start + got:]
            break
    return read


def _lane_read_pdu_data(self) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` (same events, same log lines), reading
    the PDU in large reads and offering a P-DATA-TF PDU to the association's store lane."""
    sock = self.socket.socket
    header = bytearray(6)
    try:
        read = _recv_into(sock, memoryview(header))
    except (OSError, TimeoutError) as exc:
        _dul_module.LOGGER.error("Connection closed before the entire PDU was received")
        _dul_module.LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    if read < 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        _dul_module.LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    bytestream = header
    try:
        read = _recv_pdu_body(sock, bytestream, pdu_length)
    except (OSError, TimeoutError) as exc:
        _dul_module.LOGGER.error("Connection closed before the entire PDU was received")
        _dul_module.LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    if read != pdu_length:
        _dul_module.LOGGER.error(
            f"The received PDU is shorter than expected ({6 + read} of {6 + pdu_length} bytes received)")
        self.event_queue.put("Evt17")
        return
    lane = getattr(self.assoc, "_sonoloop_lane", None)
    if pdu_type != 0x04 or lane is None or self.state_machine.current_state != "Sta6":
        _pass_on(self, bytestream)
        return
    idle = self.assoc.dimse.message is None and self.event_queue.empty() and self._recv_pdu.empty()
    for action in lane.offer(bytestream, idle):
        if isinstance(action, Pass):
            _pass_on(self, action.pdu)
        elif isinstance(action, Send):
            self.socket.send(action.pdu)
        elif isinstance(action, Abort):
            log.error("association from %s aborted: %s", self.assoc.requestor.ae_title, action.reason)
            self.event_queue.put("Evt19")  # as for a PDU pynetdicom cannot accept: A-ABORT to the peer
            return


def _pass_on(self, bytestream) -> None:
    """What pynetdicom does with a PDU it read: decode it and queue its event."""
    try:
        pdu, event = self._decode_pdu(bytestream)
        self.event_queue.put(event)
    except Exception as exc:
        _dul_module.LOGGER.error("Unable to decode the received PDU data")
        _dul_module.LOGGER.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


def _patch_dul() -> None:
    run_reactor, send_pdu, kill_dul, stop_dul = (DULServiceProvider.run_reactor, DULServiceProvider.send_pdu,
                                                 DULServiceProvider.kill_dul, DULServiceProvider.stop_dul)

    def waking_run_reactor(self) -> None:
        self._sonoloop_wakeup = _Wakeup()
        _watch(self.assoc)  # before the association's reactor runs: the DUL thread starts first
        keep_responses(self.assoc)  # including pynetdicom's own C-MOVE sub-associations
        try:
            run_reactor(self)
        finally:
            self._sonoloop_wakeup.close()
            lane = getattr(self.assoc, "_sonoloop_lane", None)
            if lane is not None:
                try:
                    lane.close()
                except Exception:
                    log.exception("closing the store lane of an association from %s failed",
                                  self.assoc.requestor.ae_title)

    def waking_send_pdu(self, primitive) -> None:
        send_pdu(self, primitive)
        wakeup = getattr(self, "_sonoloop_wakeup", None)
        if wakeup is not None:
            wakeup.set()

    def waking_kill_dul(self) -> None:
        kill_dul(self)
        wakeup = getattr(self, "_sonoloop_wakeup", None)
        if wakeup is not None:
            wakeup.set()

    def waking_stop_dul(self) -> bool:
        # stop_dul sets the flag and waits for the thread to end: wake the thread to see it
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            wakeup = getattr(self, "_sonoloop_wakeup", None)
            if wakeup is not None:
                wakeup.set()
        return stop_dul(self)

    DULServiceProvider.stop_dul = waking_stop_dul
    DULServiceProvider.run_reactor = waking_run_reactor
    DULServiceProvider.send_pdu = waking_send_pdu
    DULServiceProvider.kill_dul = waking_kill_dul
    DULServiceProvider._read_pdu_data = _lane_read_pdu_data
    _dul_module.time = _DulClock()


_applied = False


def waiting_reactors() -> None:
    """Make both threads of every association wait instead of polling; raises
    :class:`TuningError` when the installed pynetdicom no longer looks as expected (nothing is
    patched then, and pynetdicom polls every millisecond as it ships)."""
    global _applied
    for function, line in _EXPECTED:
        if line not in inspect.getsource(function):
            raise TuningError(f"pynetdicom's {function.__qualname__} no longer does {line!r}: the node's "
                              f"reactor tuning does not apply to this version (see sonoloop.dicom.tuning)")
    if hashlib.sha256(inspect.getsource(_ORIGINAL_READ_PDU_DATA).encode()).hexdigest() != _READ_PDU_DATA_SHA256:
        raise TuningError("pynetdicom's DULServiceProvider._read_pdu_data is not the one the node's tuning "
                          "replaces (see sonoloop.dicom.tuning)")
    if not (hasattr(_association_module, "time") and hasattr(_dul_module, "time")):
        raise TuningError("pynetdicom's association or dul module no longer imports time: the node's "
                          "reactor tuning does not apply to this version (see sonoloop.dicom.tuning)")
    if _applied:
        return
    _patch_dul()
    _association_module.time = _ReactorClock()
    _applied = True


def node_process() -> None:
    """Everything the node's process sets: the GIL's switch interval, and in pynetdicom no
    identifiers (patient data) in its logs and reactors that wait instead of polling."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    waiting_reactors()
