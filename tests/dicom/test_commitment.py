"""Reading storage commitment requests and writing their reports (PS3.4 Annex J)."""

import pytest
from pydicom.dataset import Dataset

from sonoloop.dicom import status
from sonoloop.dicom.archive import CommitmentOutcome
from sonoloop.dicom.commitment import CommitmentRequestError, event_report, read_request


def _request(*references, transaction="1.2.3.4") -> Dataset:
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        if sop_instance:
            item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def test_a_request_gives_its_transaction_and_references():
    assert read_request(1, _request(("1.2.840.10008.5.1.4.1.1.3.1", "1.2.5"))) == (
        "1.2.3.4", [("1.2.840.10008.5.1.4.1.1.3.1", "1.2.5")])


@pytest.mark.parametrize("action, dataset, code", [
    (2, _request(("1.2", "1.3")), status.NO_SUCH_ACTION),
    (1, None, status.MISSING_ATTRIBUTE),
    (1, _request(("1.2", "1.3"), transaction=None), status.INVALID_ARGUMENT),
    (1, _request(("1.2", "1.3"), transaction="1.02.x"), status.INVALID_ARGUMENT),
    (1, _request(), status.MISSING_ATTRIBUTE),
    (1, _request(("1.2", "")), status.INVALID_ARGUMENT),
])
def test_a_bad_request_is_refused_with_its_n_action_status(action, dataset, code):
    with pytest.raises(CommitmentRequestError) as caught:
        read_request(action, dataset)
    assert caught.value.status == code


def test_the_report_lists_committed_and_failed_instances_with_their_reasons():
    event, ds = event_report(CommitmentOutcome("1.2.3", [("1.2", "1.2.9")], [("1.2", "1.2.8", 0x0112)], "SONOLOOP"))
    assert event == 2 and ds.TransactionUID == "1.2.3" and ds.RetrieveAETitle == "SONOLOOP"
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1.2.9"]
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in ds.FailedSOPSequence] == [("1.2.8", 0x0112)]
    event, ds = event_report(CommitmentOutcome("1.2.3", [("1.2", "1.2.9")]))
    assert event == 1 and "FailedSOPSequence" not in ds
