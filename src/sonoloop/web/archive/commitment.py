"""Storage commitment (PS3.4 Annex J) as the archive decides it: a request is a row (it
survives a restart); an instance is committed only when it is indexed, of the class the
requester names, and its stored bytes still match the digest taken when it arrived.

The node reports on the requester's association when it is still open; otherwise a task
(queued with the request, so it is never lost) reports on a new association to the
requester's registered address (`sonoloop peer add AE HOST PORT`)."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sonoloop.dicom import status
from sonoloop.dicom.commitment import CommitmentOutcome

from .models import CommitmentRequest, DicomPeer, Instance
from .store import instance_path

log = logging.getLogger("sonoloop.archive")

SAME_ASSOCIATION_GRACE = 5.0  # seconds the new-association report waits for the same-association one
REPORT_ATTEMPTS = 6
REPORT_FIRST_DELAY = 10.0  # seconds; doubled after each failed attempt


def commitment_request(transaction_uid: str, references: list[tuple[str, str]], calling_ae: str,
                       address: str) -> CommitmentRequest:
    """Record a request (a repeated Transaction UID from the same AE asks again) and queue its report."""
    from .tasks import commitment_report

    with transaction.atomic():
        request, _ = CommitmentRequest.objects.update_or_create(
            calling_ae=calling_ae, transaction_uid=transaction_uid,
            defaults={"address": address, "references": [list(r) for r in references],
                      "status": CommitmentRequest.PENDING, "attempts": 0, "last_error": "", "reported_at": None})
        run_after = timezone.now() + timedelta(seconds=SAME_ASSOCIATION_GRACE)
        transaction.on_commit(lambda: commitment_report.using(run_after=run_after).enqueue(request.pk))
    log.info("storage commitment %s from %s: %d instances", transaction_uid, calling_ae, len(references))
    return request


def _verified(instance: Instance) -> bool:
    path = instance_path(instance)
    try:
        if path.stat().st_size != instance.file_size:
            return False
        if not instance.sha256:  # stored before digests were kept: the size is all there is to check
            return True
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest() == instance.sha256
    except OSError:
        return False


def commitment_outcome(request: CommitmentRequest) -> CommitmentOutcome:
    """Which of the requested instances are committed, and the Failure Reason of the others."""
    uids = [uid for _, uid in request.references]
    instances = {}
    for start in range(0, len(uids), 500):  # SQLite bounds the parameters of one query
        instances.update((i.sop_instance_uid, i) for i in Instance.objects.filter(
            sop_instance_uid__in=uids[start:start + 500]))
    committed, failed = [], []
    for sop_class, uid in request.references:
        instance = instances.get(uid)
        if instance is None:
            failed.append((sop_class, uid, status.NO_SUCH_OBJECT_INSTANCE))
        elif instance.sop_class_uid != sop_class:
            failed.append((sop_class, uid, status.CLASS_INSTANCE_CONFLICT))
        elif not _verified(instance):
            log.error("storage commitment %s: the stored file of %s does not verify", request.transaction_uid, uid)
            failed.append((sop_class, uid, status.PROCESSING_FAILURE))
        else:
            committed.append((sop_class, uid))
    return CommitmentOutcome(request.transaction_uid, committed, failed, settings.CONFIG.ae_title)


def commitment_claim(request_id: int) -> CommitmentRequest | None:
    """The request, now being reported by the caller; None when another is at it or it is done."""
    claimed = CommitmentRequest.objects.filter(pk=request_id, status=CommitmentRequest.PENDING).update(
        status=CommitmentRequest.REPORTING, claimed_at=timezone.now())
    return CommitmentRequest.objects.get(pk=request_id) if claimed else None


def commitment_reported(request: CommitmentRequest, outcome: CommitmentOutcome, delivery: str) -> None:
    CommitmentRequest.objects.filter(pk=request.pk).update(
        status=CommitmentRequest.REPORTED, delivery=delivery, committed=len(outcome.committed),
        failed=len(outcome.failed), failures=[list(f) for f in outcome.failed], reported_at=timezone.now(),
        last_error="")
    log.info("storage commitment %s reported to %s on the %s: %d committed, %d failed", request.transaction_uid,
             request.calling_ae, delivery, len(outcome.committed), len(outcome.failed))


def commitment_release(request: CommitmentRequest, error: str) -> None:
    """The report did not get through this way: pending again, for the task."""
    CommitmentRequest.objects.filter(pk=request.pk, status=CommitmentRequest.REPORTING).update(
        status=CommitmentRequest.PENDING, last_error=error)
    log.info("storage commitment %s: not reported %s; the queued task reports it on a new association",
             request.transaction_uid, error)


def commitment_report_run(request_id: int) -> str:
    """The task: report on a new association unless the node reported on the requester's own."""
    from sonoloop.dicom.commitment import send_report
    from sonoloop.dicom.send import Peer, SendError
    from sonoloop.dicom.tls import client_context

    from .tasks import commitment_report

    current = CommitmentRequest.objects.filter(pk=request_id).first()
    if current is None or current.status in (CommitmentRequest.REPORTED, CommitmentRequest.FAILED):
        return current.status if current else "missing"
    if current.status == CommitmentRequest.REPORTING:  # the node is reporting on the association
        stale = timezone.now() - current.claimed_at > timedelta(seconds=5 * 60)
        if not stale:
            commitment_report.using(run_after=timezone.now() + timedelta(seconds=SAME_ASSOCIATION_GRACE)
                                    ).enqueue(request_id)
            return current.status
        CommitmentRequest.objects.filter(pk=request_id).update(status=CommitmentRequest.PENDING)
    request = commitment_claim(request_id)
    if request is None:
        return "claimed elsewhere"
    peer = DicomPeer.objects.filter(ae_title=request.calling_ae).first()
    outcome = commitment_outcome(request)
    try:
        if peer is None:
            raise SendError(f"{request.calling_ae} is not a registered peer, so there is no address to send the "
                            f"report to: `sonoloop peer add {request.calling_ae} HOST PORT`")
        config = settings.CONFIG
        tls = client_context(config.tls_cert, config.tls_key, config.tls_ca) if peer.use_tls else None
        send_report(outcome, Peer(peer.ae_title, peer.host, peer.port), config.ae_title, tls_context=tls)
    except SendError as exc:
        return _report_failed(request, str(exc))
    commitment_reported(request, outcome, "new association")
    return CommitmentRequest.REPORTED


def _report_failed(request: CommitmentRequest, error: str) -> str:
    from .tasks import commitment_report

    attempts = request.attempts + 1
    if attempts >= REPORT_ATTEMPTS:
        CommitmentRequest.objects.filter(pk=request.pk).update(status=CommitmentRequest.FAILED, attempts=attempts,
                                                               last_error=error)
        log.error("storage commitment %s: no report reached %s after %d attempts: %s", request.transaction_uid,
                  request.calling_ae, attempts, error)
        return CommitmentRequest.FAILED
    delay = REPORT_FIRST_DELAY * 2 ** (attempts - 1)
    CommitmentRequest.objects.filter(pk=request.pk).update(status=CommitmentRequest.PENDING, attempts=attempts,
                                                           last_error=error)
    log.warning("storage commitment %s: report to %s failed (attempt %d), again in %.0f s: %s",
                request.transaction_uid, request.calling_ae, attempts, delay, error)
    commitment_report.using(run_after=timezone.now() + timedelta(seconds=delay)).enqueue(request.pk)
    return CommitmentRequest.PENDING
