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
"""

from __future__ import annotations

import queue


def keep_responses(association) -> None:
    """Make ``association``'s reactor leave responses on the queue for the sender (idempotent).
    Call it before the association sends anything: Sonoloop's own associations
    (``dicom.send.open_association``) and, in the node's process, every association
    (``dicom.tuning``), including the ones pynetdicom opens for C-MOVE sub-operations."""
    dimse = association.dimse
    if getattr(dimse, "_sonoloop_keeps_responses", False):
        return
    messages: queue.Queue = dimse.msg_queue
    take = dimse.get_msg
    checkpoint = association._reactor_checkpoint

    def get_msg(block: bool = False):
        if block:
            return take(block=True)
        with messages.not_empty:  # what Queue.get(block=False) does, with a look at the head first
            if not messages._qsize():
                return None, None
            _, message = messages.queue[0]
            if message is not None and not message.is_valid_request and not checkpoint.is_set():
                return None, None  # a response, and a thread is sending: that thread reads it
            item = messages._get()
            messages.not_full.notify()
            return item

    dimse.get_msg = get_msg
    dimse._sonoloop_keeps_responses = True
