"""The store lane against pynetdicom's own encoders: the PDUs a peer sends are built by
pynetdicom (as a requestor would), and what the lane stores and answers is compared byte for
byte with what pynetdicom's receiving side writes and sends."""

import hashlib
from io import BytesIO

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF

from sonoloop.dicom import storelane
from sonoloop.dicom.storelane import Abort, Pass, Send, StoreLane, StoreRequest, p_data_tf, pdv_items

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
EXPLICIT = "1.2.840.10008.1.2.1"
CONTEXTS = {1: (US_IMAGE, EXPLICIT), 3: ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2")}


def _pdus(message, context_id: int, max_pdu: int) -> list[bytes]:
    out = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        out.append(pdu.encode())
    return out


def store_request_pdus(dataset: bytes, sop_instance: str, *, message_id=5, context_id=1, sop_class=US_IMAGE,
                       max_pdu=16382) -> list[bytes]:
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 0
    request.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return _pdus(message, context_id, max_pdu)


def echo_pdus(message_id=9, context_id=1) -> list[bytes]:
    request = C_ECHO()
    request.MessageID = message_id
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(request)
    return _pdus(message, context_id, 16382)


def pynetdicom_file(dataset: bytes, sop_instance: str, sop_class=US_IMAGE, syntax=EXPLICIT) -> bytes:
    """What pynetdicom's spool file holds for a received data set."""
    meta = DicomBytesIO()
    write_file_meta_info(meta, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                                transfer_syntax=syntax))
    return b"\0" * 128 + b"DICM" + meta.getvalue() + dataset


def pynetdicom_response(message_id: int, sop_instance: str, status: int, context_id=1) -> bytes:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = US_IMAGE
    response.AffectedSOPInstanceUID = sop_instance
    response.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    (pdu,) = _pdus(message, context_id, 16382)
    return pdu


class Recorder:
    def __init__(self, status=0):
        self.calls = []
        self.status = status

    def __call__(self, request: StoreRequest, raw: bytes, sha256: str) -> int:
        self.calls.append((request, raw, sha256))
        return self.status


def lane(store=None, max_bytes=10**9, closed=None) -> StoreLane:
    return StoreLane(CONTEXTS, store or Recorder(), max_bytes,
                     on_close=None if closed is None else (lambda: closed.append(True)))


def feed(the_lane: StoreLane, pdus, idle=True) -> list:
    actions = []
    for pdu in pdus:
        actions += the_lane.offer(pdu, idle)
    return actions


DATASET = bytes(range(256)) * 2000  # any bytes: the lane does not parse the data set


@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45"])  # odd and even lengths (padding)
def test_the_file_meta_is_byte_for_byte_what_pynetdicom_writes(uid):
    syntax = "1.2.840.10008.1.2.4.50"
    expected = pynetdicom_file(b"", uid, syntax=syntax)
    assert storelane.file_meta(US_IMAGE, uid, syntax) == expected


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB000, 0xC000])
def test_the_response_is_byte_for_byte_what_pynetdicom_sends(status):
    request = StoreRequest(1, 77, US_IMAGE, "1.2.3.45", EXPLICIT)
    assert storelane.store_response(request, status) == pynetdicom_response(77, "1.2.3.45", status)


@pytest.mark.parametrize("max_pdu", [4096, 16382, 131072, 0])
def test_a_store_request_is_stored_as_pynetdicom_would_and_answered(max_pdu):
    recorder = Recorder(status=0xB000)
    pdus = store_request_pdus(DATASET, "1.2.3.4", message_id=12, max_pdu=max_pdu)
    actions = feed(lane(recorder), pdus)
    (request, raw, sha256), = recorder.calls
    assert request == StoreRequest(1, 12, US_IMAGE, "1.2.3.4", EXPLICIT)
    assert raw == pynetdicom_file(DATASET, "1.2.3.4")
    assert sha256 == hashlib.sha256(raw).hexdigest()
    assert actions == [Send(pynetdicom_response(12, "1.2.3.4", 0xB000))]


def test_other_messages_go_back_to_pynetdicom_whole_and_in_order():
    the_lane, recorder = lane(), None
    echo = echo_pdus()
    assert feed(the_lane, echo) == [Pass(pdu) for pdu in echo]
    # a command split over two PDUs is held until it is complete, then handed back together
    command = pdv_items(echo[0])[0]
    halves = [p_data_tf([(1, 0x01, command[2][:10])]), p_data_tf([(1, 0x03, command[2][10:])])]
    assert the_lane.offer(halves[0], True) == []
    assert the_lane.offer(halves[1], True) == [Pass(halves[0]), Pass(halves[1])]
    # a store on a context the lane does not take (not a storage context of this node's), or
    # naming another SOP Class than its context's: pynetdicom's
    for pdus in (store_request_pdus(DATASET, "1.2.3.4", context_id=5),
                 store_request_pdus(DATASET, "1.2.3.4", context_id=3)):
        recorder = Recorder()
        other = lane(recorder)
        assert feed(other, pdus) == [Pass(pdu) for pdu in pdus]
        assert recorder.calls == []


def test_a_message_pynetdicom_has_begun_stays_pynetdicoms():
    recorder = Recorder()
    pdus = store_request_pdus(DATASET, "1.2.3.4")
    assert feed(lane(recorder), pdus, idle=False) == [Pass(pdu) for pdu in pdus]
    assert recorder.calls == []
    # a data fragment with no command before it: pynetdicom judges it
    assert feed(lane(recorder), pdus[1:]) == [Pass(pdus[1])] + [Pass(pdu) for pdu in pdus[2:]]
    assert recorder.calls == []


def test_one_pdu_may_end_one_request_and_begin_the_next():
    recorder = Recorder()
    first = [pdv_items(pdu) for pdu in store_request_pdus(DATASET[:1000], "1.2.3.4", message_id=1)]
    second = [pdv_items(pdu) for pdu in store_request_pdus(DATASET[:2000], "1.2.3.5", message_id=2)]
    items = [item for pdu in first for item in pdu] + [item for pdu in second for item in pdu]
    actions = feed(lane(recorder), [p_data_tf(items[:2]), p_data_tf(items[2:])])
    assert [call[1] for call in recorder.calls] == [pynetdicom_file(DATASET[:1000], "1.2.3.4"),
                                                    pynetdicom_file(DATASET[:2000], "1.2.3.5")]
    assert actions == [Send(pynetdicom_response(1, "1.2.3.4", 0)), Send(pynetdicom_response(2, "1.2.3.5", 0))]


def test_a_peer_breaking_off_a_data_set_is_aborted_and_nothing_is_stored():
    pdus = store_request_pdus(DATASET, "1.2.3.4", max_pdu=4096)
    echo = echo_pdus()
    for intruder in (echo[0],  # a command inside the data set
                     p_data_tf([(3, 0x00, memoryview(b"xx"))]),  # data on another context
                     b"\x04\x00\x00\x00\x00\x09\x00\x00\x00\x05\x01"):  # a malformed PDU
        recorder = Recorder()
        actions = feed(lane(recorder), pdus[:3] + [intruder])
        assert len(actions) == 1 and isinstance(actions[0], Abort), actions
        assert recorder.calls == []


def test_more_than_the_limit_aborts_and_a_large_data_set_is_gathered_in_a_spool_file(tmp_path, monkeypatch):
    recorder = Recorder()
    pdus = store_request_pdus(DATASET, "1.2.3.4", max_pdu=16382)
    actions = feed(lane(recorder, max_bytes=100_000), pdus)
    assert [type(a) for a in actions] == [Abort] and "100000-byte limit" in actions[0].reason
    assert recorder.calls == []

    monkeypatch.setattr(storelane, "SPILL_BYTES", 50_000)
    monkeypatch.setattr(storelane.tempfile, "tempdir", str(tmp_path))
    closed = []
    big = lane(recorder, closed=closed)
    assert feed(big, pdus[:10]) == []
    assert len(list(tmp_path.iterdir())) == 1  # spilled
    assert feed(big, pdus[10:]) == [Send(pynetdicom_response(5, "1.2.3.4", 0))]
    assert recorder.calls[0][1] == pynetdicom_file(DATASET, "1.2.3.4")
    assert list(tmp_path.iterdir()) == []
    # an association that ends half-way leaves no spool file behind, and says it stored
    assert feed(big, pdus[:10]) == [] and len(list(tmp_path.iterdir())) == 1
    big.close()
    assert list(tmp_path.iterdir()) == [] and closed == [True]
