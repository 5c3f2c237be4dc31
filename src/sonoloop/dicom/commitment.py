"""Storage Commitment Push Model (PS3.4 Annex J), the DICOM side: reading an N-ACTION request,
writing the N-EVENT-REPORT, and sending it on a new association when the requester's is gone.

The decision of what is committed is the archive's (``Archive.commitment_*``); this module only
speaks the protocol. No Django."""

from __future__ import annotations

import ssl

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from . import status
from .archive import CommitmentOutcome
from .send import Peer, SendError, open_association

ACTION_REQUEST_COMMITMENT = 1  # the only Action Type ID of the Push Model
EVENT_ALL_SUCCEEDED, EVENT_SOME_FAILED = 1, 2
MAX_REFERENCES = 100_000  # one request naming more is refused with a resource limitation


class CommitmentRequestError(Exception):
    """The N-ACTION cannot be accepted; ``status`` is its N-ACTION status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.status = code


def read_request(action_type: int | None, dataset: Dataset | None) -> tuple[str, list[tuple[str, str]]]:
    """(Transaction UID, [(SOP Class UID, SOP Instance UID)]) of an N-ACTION Request Commitment;
    raises CommitmentRequestError with the N-ACTION status otherwise."""
    if action_type != ACTION_REQUEST_COMMITMENT:
        raise CommitmentRequestError(f"Action Type ID {action_type} is not Request Storage Commitment (1)",
                                     status.NO_SUCH_ACTION)
    if dataset is None:
        raise CommitmentRequestError("the request carries no Action Information", status.MISSING_ATTRIBUTE)
    transaction_uid = str(dataset.get("TransactionUID", "") or "")
    if not transaction_uid or not UID(transaction_uid).is_valid:
        raise CommitmentRequestError("the Transaction UID is missing or not a valid UID", status.INVALID_ARGUMENT)
    items = dataset.get("ReferencedSOPSequence") or []
    if not items:
        raise CommitmentRequestError("the Referenced SOP Sequence is missing or empty", status.MISSING_ATTRIBUTE)
    if len(items) > MAX_REFERENCES:
        raise CommitmentRequestError(f"more than {MAX_REFERENCES} instances in one request",
                                     status.RESOURCE_LIMITATION)
    references = []
    for item in items:
        sop_class, sop_instance = (str(item.get(k, "") or "") for k in ("ReferencedSOPClassUID",
                                                                         "ReferencedSOPInstanceUID"))
        if not sop_class or not sop_instance:
            raise CommitmentRequestError("an item of the Referenced SOP Sequence lacks its SOP Class or "
                                         "Instance UID", status.INVALID_ARGUMENT)
        references.append((sop_class, sop_instance))
    return transaction_uid, references


def event_report(outcome: CommitmentOutcome) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information for ``outcome``."""
    ds = Dataset()
    ds.TransactionUID = outcome.transaction_uid
    if outcome.retrieve_ae and outcome.committed:
        ds.RetrieveAETitle = outcome.retrieve_ae
    if outcome.committed:
        ds.ReferencedSOPSequence = [_item(c, i) for c, i in outcome.committed]
    if outcome.failed:
        ds.FailedSOPSequence = [_item(c, i, reason) for c, i, reason in outcome.failed]
    return (EVENT_SOME_FAILED if outcome.failed else EVENT_ALL_SUCCEEDED), ds


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


def send_on(association, outcome: CommitmentOutcome) -> int | None:
    """Send the report on an open association; the peer's status, or None without an answer."""
    event_type, info = event_report(outcome)
    answer, _ = association.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                 StorageCommitmentPushModelInstance)
    return int(answer.Status) if answer and "Status" in answer else None


def send_report(outcome: CommitmentOutcome, peer: Peer, calling_ae: str, timeout: float = 30,
                tls_context: ssl.SSLContext | None = None) -> None:
    """The report on a new association to the requester (Sonoloop asks for the SCP role of
    the Push Model, as PS3.4 J.3.3.1.2 says); raises SendError unless the peer took it."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    association = open_association(ae, peer, tls_context, timeout, "the Storage Commitment Push Model",
                                   ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    try:
        if not association.accepted_contexts:
            raise SendError(f"{peer.ae_title} accepts no Storage Commitment Push Model context")
        code = send_on(association, outcome)
    finally:
        association.release()
    if code != status.SUCCESS:
        raise SendError(f"{peer.ae_title} answered the storage commitment report with status "
                        f"{'none' if code is None else hex(code)}")
