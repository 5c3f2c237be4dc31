"""Sending results (SEG and SR) to the peers that receive them: one task per object and peer,
retried with growing delays. The association itself is ``sonoloop.dicom.send``, the same sender
C-MOVE uses; this module keeps the rows that say what was sent where."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from sonoloop.web.archive.models import Instance

from .models import AnalysisResult, ResultForward

log = logging.getLogger("sonoloop.analysis")

FORWARD_ATTEMPTS = 6
FORWARD_FIRST_DELAY = 10.0  # seconds; doubled after each failure (10, 20, 40, 80, 160)


def forwards_queue(result: AnalysisResult) -> list[ResultForward]:
    """The result's SEG and SR to every peer that receives results, each as its own task."""
    from sonoloop.web.archive.models import DicomPeer

    forwards = []
    for peer in DicomPeer.objects.filter(receives_results=True):
        for what, uid in (("SEG", result.seg_sop_instance_uid), ("SR", result.sr_sop_instance_uid)):
            if uid:
                forward = ResultForward.objects.create(result=result, peer=peer, sop_instance_uid=uid, what=what)
                _enqueue_forward(forward)
                forwards.append(forward)
    return forwards


def _enqueue_forward(forward: ResultForward, run_after=None) -> None:
    from .tasks import forward_result

    task = forward_result.using(run_after=run_after) if run_after else forward_result
    task.enqueue(forward.pk)


def forward_run(forward_id: int) -> str:
    """Send one result object; on failure try again later, FORWARD_ATTEMPTS times in all."""
    from sonoloop.dicom.send import Peer, SendError, send_file
    from sonoloop.dicom.tls import client_context
    from sonoloop.web.archive.services import instance_path

    forward = ResultForward.objects.select_related("peer").filter(pk=forward_id).first()
    if forward is None or forward.status in (ResultForward.SENT, ResultForward.FAILED):
        return forward.status if forward else "missing"
    peer = forward.peer
    forward.attempts += 1
    try:
        instance = Instance.objects.filter(sop_instance_uid=forward.sop_instance_uid).first()
        if instance is None:
            raise SendError(f"{forward.what} {forward.sop_instance_uid} is no longer in the archive")
        config = settings.CONFIG
        tls_context = client_context(config.tls_cert, config.tls_key, config.tls_ca) if peer.use_tls else None
        send_file(instance_path(instance), Peer(peer.ae_title, peer.host, peer.port), config.ae_title,
                  tls_context=tls_context)
    except SendError as exc:
        forward.last_error = str(exc)
        if forward.attempts >= FORWARD_ATTEMPTS:
            forward.status, forward.next_attempt_at = ResultForward.FAILED, None
            log.error("sending %s to %s failed for good after %d attempts: %s", forward.sop_instance_uid,
                      peer.ae_title, forward.attempts, exc)
        else:
            delay = FORWARD_FIRST_DELAY * 2 ** (forward.attempts - 1)
            forward.status, forward.next_attempt_at = ResultForward.RETRYING, timezone.now() + timedelta(seconds=delay)
            log.warning("sending %s to %s failed (attempt %d), again in %.0f s: %s", forward.sop_instance_uid,
                        peer.ae_title, forward.attempts, delay, exc)
        forward.save()
        if forward.status == ResultForward.RETRYING:
            _enqueue_forward(forward, run_after=forward.next_attempt_at)
        return forward.status
    forward.status, forward.sent_at, forward.last_error, forward.next_attempt_at = (
        ResultForward.SENT, timezone.now(), "", None)
    forward.save()
    return forward.status
