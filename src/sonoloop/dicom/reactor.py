"""A response on an association goes to the thread that sent the request, never to its reactor.

pynetdicom runs a reactor thread per association that takes each whole DIMSE message off the
association's queue and serves it (a request from the peer). A thread that sends a request
itself (``send_c_store``, ``send_c_echo``, ...) pauses the reactor first and then reads the
response from the same queue. The pause can be missed: the sender clears the reactor's
checkpoint and waits until the reactor says it is paused, but the reactor says so *before* it
waits on the checkpoint and takes it back only *after* it wakes. When one request follows
another, the previous ``send_*`` has just set the checkpoint again, the reactor has been woken
but has not run yet, and the next sender sees "paused" that is no longer true. If the
response then arrives before the reactor's next look at the queue, the reactor takes it, logs
"Received unexpected C-STORE service message" and drops it; the sender waits out its DIMSE
timeout and aborts the association. On a loaded two-core machine this happened about once in
two thousand messages (pynetdicom 3.0.4; pydicom/pynetdicom#875 reports the same for C-FIND).

:func:`keep_responses` closes it from the queue's side: while a thread has paused the reactor
(the checkpoint is clear), the reactor's look at the queue (pynetdicom's only non-blocking read
of it) takes a message only if it is a request, the one kind the reactor serves, and leaves a
response for the blocking read of the thread that sent the request. When no thread is sending,
a response is one nobody asked for: the reactor takes it and drops it with pynetdicom's
warning, as before (left on the queue it would keep the reactor awake and be read as the answer
to the next request). Nothing the reactor serves changes.

It also ends the sender's wait when the peer asks to release the association. A requester may
release as soon as it has the answer it wanted, and a message the node sends then crosses its
A-RELEASE-RQ on the wire: storage commitment's report on the requester's association, sent
right after the N-ACTION response, is the case that happens. pynetdicom's requester ignores
the message (it only waits for its A-RELEASE-RP), but the sender has paused its own reactor,
which is what would answer the release: the sender waited for a response that could not
come until the requester gave up at its ACSE timeout (30 s by default) and aborted, and the
storage commitment request stayed claimed by the node meanwhile. pynetdicom wakes the sender
when the peer aborts or the connection closes, never when the peer asks to release. So the
sender's blocking read looks for a release request between waits of :data:`LOOK_SECONDS`; when
one has come it lets the reactor run again, which answers the release as pynetdicom always
does, and returns "no response", which the sender already handles as the association having
ended. A reactor that is itself the sender (a C-GET's C-STOREs) cannot answer: it returns "no
response" at once and pynetdicom aborts, as it did after the DIMSE timeout before.

The same crossing has a second order: the reactor, woken just before the sender paused it (the
race above), answers the release in the moment between the sender's check that the association
is open and its message going out. The association has then ended before the sender waits, and
nothing wakes it: after a release nothing is put on the queue (only an abort or a closed
connection puts "no response" there). The sender waited out its whole DIMSE timeout (60 s in
the node, longer than a stopping node's 20 s drain, so a restart found the commitment request
still claimed: session 29's CI failure), and its message, handed to a DUL already waiting for
the connection to close (Sta13), raised InvalidEventError in the DUL's thread and ended it. A
message for an association that has ended is not sent, and the blocking read returns "no
response" as soon as the association is no longer established and nothing is on the queue.
"""

from __future__ import annotations

import queue
import threading
import time

from pynetdicom.pdu_primitives import A_RELEASE

# how often a thread waiting for its response looks whether the peer has asked to release
LOOK_SECONDS = 0.1
# how long it then gives the reactor to answer the release before pynetdicom aborts instead
RELEASE_ANSWER_SECONDS = 5.0


def keep_responses(association) -> None:
    """Make ``association``'s reactor leave responses on the queue for the sender (idempotent).
    Call it before the association sends anything: Sonoloop's own associations
    (``dicom.send.open_association``), every association the node accepts (``DicomNode``, when
    it is established) and, in the node's process, every association (``dicom.tuning``),
    including the ones pynetdicom opens for C-MOVE sub-operations."""
    dimse = association.dimse
    if getattr(dimse, "_sonoloop_keeps_responses", False):
        return
    messages: queue.Queue = dimse.msg_queue
    checkpoint = association._reactor_checkpoint

    def get_msg(block: bool = False):
        if block:
            return _response(association, messages, checkpoint)
        with messages.not_empty:  # what Queue.get(block=False) does, with a look at the head first
            if not messages._qsize():
                return None, None
            _, message = messages.queue[0]
            if message is not None and not message.is_valid_request and not checkpoint.is_set():
                return None, None  # a response, and a thread is sending: that thread reads it
            item = messages._get()
            messages.not_full.notify()
            return item

    send_msg = dimse.send_msg

    def send_while_established(primitive, context_id: int) -> None:
        if not association.is_established:  # ended under the sender: its DUL would raise in Sta13
            return  # and the blocking read that follows says "no response"
        send_msg(primitive, context_id)

    dimse.get_msg = get_msg
    dimse.send_msg = send_while_established
    dimse._sonoloop_keeps_responses = True


def _release_requested(association) -> bool:
    """Whether an A-RELEASE-RQ from the peer waits for the reactor (looked at, not taken)."""
    primitive = association.dul.peek_next_pdu()
    return isinstance(primitive, A_RELEASE) and primitive.result is None


def _response(association, messages: queue.Queue, checkpoint: threading.Event):
    """The sender's blocking read: the next message, or (None, None) when the DIMSE timeout
    runs out (as pynetdicom's), when the peer has asked to release the association, or when
    the association has already ended."""
    timeout = association.dimse.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = LOOK_SECONDS if deadline is None else max(0.0, min(LOOK_SECONDS, deadline - time.monotonic()))
        try:
            return messages.get(block=True, timeout=left)
        except queue.Empty:
            pass
        if not association.is_established:  # the reactor answered a release first: nothing will come
            return None, None
        if _release_requested(association):
            break
        if deadline is not None and time.monotonic() >= deadline:
            return None, None
    if threading.current_thread() is not association:  # a reactor sending on its own association cannot
        checkpoint.set()  # the reactor answers the release and ends the association
        until = time.monotonic() + RELEASE_ANSWER_SECONDS
        while association.is_established and time.monotonic() < until:
            time.sleep(0.005)
    return None, None
