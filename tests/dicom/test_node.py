"""The node's own networking, with an archive that answers only who may echo.

With SONOLOOP_TEST_NODE_TUNING=1 this module runs under the node process's pynetdicom tuning
(tests/dicom/test_tuning.py does so in a subprocess: the tuning is process-wide)."""

import hashlib
import os
import socket
import threading
import time
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import UltrasoundImageStorage, Verification

from sonoloop.dicom.archive import Permissions
from sonoloop.dicom.node import DicomNode, NodeSettings
from sonoloop.dicom.reactor import keep_responses
from tests.conftest import free_port

TUNED = os.environ.get("SONOLOOP_TEST_NODE_TUNING") == "1"
if TUNED:
    from sonoloop.dicom import tuning

    tuning.node_process()


class EchoOnly:
    """The two calls a C-ECHO association makes of the archive."""

    def __init__(self):
        self.ended = 0

    def permissions(self, calling_ae, address, certificate_names=()):
        return Permissions(echo=True, store=False, query=False)

    def association_ended(self):
        self.ended += 1


@pytest.fixture
def node():
    archive = EchoOnly()
    node = DicomNode(archive, NodeSettings("SONOLOOP", "127.0.0.1", free_port(), acse_timeout=30,
                                           max_associations=3))
    node.start(block=False)
    yield node, archive
    node.stop()


def wait_until_no_association(node, seconds: float) -> float:
    started = time.monotonic()
    while node.server.active_associations and time.monotonic() - started < seconds:
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_connection_closed_before_any_request_frees_its_thread_at_once(node):
    """A port probe (a load balancer's health check, a scanner) opens TCP and closes it. pynetdicom
    alone keeps that acceptor waiting the whole ACSE timeout (30 s here) for a request that cannot
    come. Every such thread counts against the association limit (pynetdicom rejects a request
    when its acceptors exceed it), so a health check every few seconds kept a modality out,
    and each delayed a shutdown's drain by as much."""
    node, archive = node
    for _ in range(5):  # more probes than the node takes associations
        socket.create_connection(("127.0.0.1", node.settings.port)).close()
    time.sleep(0.2)
    assert wait_until_no_association(node, 5) < 5, "a closed probe still holds an acceptor thread"

    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
    assert assoc.is_established, "the probes still take the node's association slots"
    assert assoc.send_c_echo().Status == 0x0000  # the node still answers
    assoc.release()
    assert wait_until_no_association(node, 5) < 5

    started = time.monotonic()
    node.drain(timeout=20)
    assert time.monotonic() - started < 2  # nothing open: the drain does not wait


def test_a_connection_that_sends_nothing_is_still_held_only_until_the_acse_timeout(node):
    """The wake-up is for closed connections only: one left open is bounded by the timeout as before."""
    node, _ = node
    node.ae.acse_timeout = 1
    with socket.create_connection(("127.0.0.1", node.settings.port)):
        time.sleep(0.3)
        assert node.server.active_associations  # still waiting for the request
        assert wait_until_no_association(node, 5) < 5  # then the ACSE timeout ends it


def test_an_idle_association_ends_at_the_network_timeout_and_an_abort_frees_it_at_once(node):
    """What the reactors check on their timers and what wakes them, with pynetdicom as it ships
    and (run again by tests/dicom/test_tuning.py) with the node's waiting reactors."""
    node, _ = node
    node.ae.network_timeout = 1
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(Verification)
    idle = ae.associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
    assert idle.is_established
    assert idle.send_c_echo().Status == 0x0000
    started = time.monotonic()
    while idle.is_established and time.monotonic() - started < 5:
        time.sleep(0.02)
    assert not idle.is_established and idle.is_aborted  # the node gave up on the silent peer
    assert 0.9 < time.monotonic() - started < 3
    assert wait_until_no_association(node, 5) < 5

    node.ae.network_timeout = 60
    aborting = ae.associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
    assert aborting.is_established and aborting.send_c_echo().Status == 0x0000
    aborting.abort()
    assert wait_until_no_association(node, 5) < 1  # the peer's A-ABORT wakes the reactor
    later = ae.associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
    assert later.is_established and later.send_c_echo().Status == 0x0000
    later.release()


class Storing(EchoOnly):
    """An archive that keeps what it is given, and where (which thread) it was given it."""

    def __init__(self, status=0x0000):
        super().__init__()
        self.stored, self.threads, self.ended_in = [], [], []
        self.status = status

    def permissions(self, calling_ae, address, certificate_names=()):
        return Permissions(echo=True, store=True, query=False)

    def store(self, raw, *, calling_ae, address, expected=None, may_correct=False, sha256=None):
        self.stored.append((bytes(raw), expected, sha256))
        self.threads.append(threading.current_thread())
        return self.status

    def association_ended(self):
        super().association_ended()
        self.ended_in.append(threading.current_thread())


def _image(uid: str, size: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, uid
    ds.PatientID, ds.Rows, ds.Columns = "P1", size // 100, 100
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel, ds.PixelRepresentation = 8, 8, 7, 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(100)) * (size // 100)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


def _storing_node(archive, **settings):
    node = DicomNode(archive, NodeSettings("SONOLOOP", "127.0.0.1", free_port(), **settings))
    node.start(block=False)
    return node


def _requestor():
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(UltrasoundImageStorage, ExplicitVRLittleEndian)
    return ae


def test_stores_and_echoes_on_one_association_are_answered_and_stored_as_sent():
    """Under the tuning the C-STOREs go through the store lane (in the DUL thread), the C-ECHO
    through pynetdicom; without it everything goes through pynetdicom. The archive sees the same
    bytes either way: the File Meta pynetdicom writes, then the data set as sent."""
    archive = Storing(status=0xB000)
    node = _storing_node(archive)
    try:
        assoc = _requestor().associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP", max_pdu=16382)
        assert assoc.is_established
        keep_responses(assoc)  # several messages on one association (see sonoloop.dicom.reactor)
        images = [_image(f"1.2.826.0.1.3680043.8.498.{n}", 50_000 * n) for n in (1, 2)]
        assert assoc.send_c_store(images[0]).Status == 0xB000
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(images[1]).Status == 0xB000
        assoc.release()
        assert wait_until_no_association(node, 5) < 5
    finally:
        node.stop()
    assert [expected for _, expected, _ in archive.stored] == [(UltrasoundImageStorage, i.SOPInstanceUID) for i in images]
    for (raw, _, sha256), image in zip(archive.stored, images):
        assert raw[128:132] == b"DICM"
        stored = dcmread(BytesIO(raw))
        assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert stored.file_meta.MediaStorageSOPInstanceUID == image.SOPInstanceUID
        assert stored.PixelData == image.PixelData and stored.PatientID == "P1"
        # the lane hashes as the bytes arrive; pynetdicom's handler leaves it to the archive
        assert sha256 == (hashlib.sha256(raw).hexdigest() if TUNED else None)
    in_lane = [isinstance(thread, DULServiceProvider) for thread in archive.threads]
    assert in_lane == [TUNED, TUNED]
    if TUNED:  # the lane's thread also closed its part of the association
        assert archive.threads[0] in archive.ended_in


def test_an_instance_over_the_limit_aborts_the_association_and_nothing_is_stored():
    archive = Storing()
    node = _storing_node(archive, max_instance_bytes=20_000)
    try:
        assoc = _requestor().associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP", max_pdu=16382)
        assert assoc.is_established
        keep_responses(assoc)  # several messages on one association (see sonoloop.dicom.reactor)
        assert assoc.send_c_store(_image("1.2.3.1", 10_000)).Status == 0x0000  # under the limit
        response = assoc.send_c_store(_image("1.2.3.2", 5_000_000))
        assert "Status" not in response  # no answer: the node aborted
        started = time.monotonic()
        while assoc.is_established and time.monotonic() - started < 5:
            time.sleep(0.02)
        assert assoc.is_aborted
        assert wait_until_no_association(node, 5) < 5
        again = _requestor().associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
        assert again.send_c_store(_image("1.2.3.3", 10_000)).Status == 0x0000  # the node still takes stores
        again.release()
    finally:
        node.stop()
    assert [expected[1] for _, expected, _ in archive.stored] == ["1.2.3.1", "1.2.3.3"]


def test_a_pdu_that_declares_gigabytes_costs_only_what_arrives():
    """A peer may declare a 4 GB P-DATA-TF PDU and send a few bytes: memory is taken as the
    bytes arrive, not for what the header claims."""
    import resource

    archive = Storing()
    node = _storing_node(archive)
    try:
        assoc = _requestor().associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
        assert assoc.is_established
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assoc.dul.socket.socket.sendall(b"\x04\x00\xff\xff\xff\xf0" + b"\x00" * 1000)
        time.sleep(0.5)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mb < 100, grown_mb
        assoc.abort()
        assert wait_until_no_association(node, 5) < 5
        again = _requestor().associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
        assert again.send_c_store(_image("1.2.3.9", 10_000)).Status == 0x0000
        again.release()
    finally:
        node.stop()
    assert [expected[1] for _, expected, _ in archive.stored] == ["1.2.3.9"]


class SlowCommitment:
    """A storage commitment archive whose report on the requester's association takes a while
    between claiming the request and handing it back (the node's own report is under way)."""

    def __init__(self):
        self.handed_back = threading.Event()

    def permissions(self, calling_ae, address, certificate_names=()):
        return Permissions(echo=True, store=True, query=False)

    def commitment_request(self, transaction_uid, references, *, calling_ae, address):
        return 1

    def commitment_report_here(self, request_id, send):
        time.sleep(1.0)  # claimed: the outcome being worked out
        self.handed_back.set()  # recorded as sent or handed back to the queued task
        return False

    def association_ended(self):
        pass


def _request_commitment(association):
    """An N-ACTION asking to commit one (unknown) instance; the status of its response."""
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

    request = Dataset()
    request.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = UltrasoundImageStorage, generate_uid()
    request.ReferencedSOPSequence = [item]
    status, _ = association.send_n_action(request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
    return status


def test_a_stopping_node_lets_a_commitment_report_under_way_be_handed_back_before_it_exits():
    """The requester releases at once; the node is stopped while its report on that association
    is still being worked out. Stopping waits for it to be recorded: a node that exits with the
    request claimed leaves it unreported for minutes."""
    from pynetdicom.sop_class import StorageCommitmentPushModel

    archive = SlowCommitment()
    node = DicomNode(archive, NodeSettings("SONOLOOP", "127.0.0.1", free_port(), acse_timeout=30))
    node.start(block=False)
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)
        association = ae.associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP")
        status = _request_commitment(association)
        association.release()
        assert status.Status == 0x0000 and not archive.handed_back.is_set()
        node.drain(timeout=10)
        assert archive.handed_back.is_set()
    finally:
        node.stop()


class UnansweredCommitment(SlowCommitment):
    """Sends the report on the requester's association and hands the request back when no
    answer comes (what the Django archive does)."""

    def __init__(self):
        super().__init__()
        self.answers: list = []

    def commitment_report_here(self, request_id, send):
        from sonoloop.dicom.archive import CommitmentOutcome

        self.answers.append(send(CommitmentOutcome("1.2.3.4", [], [], "SONOLOOP")))
        self.handed_back.set()
        return False


def test_a_stopping_node_aborts_a_requester_that_holds_its_report_unanswered_and_hands_the_request_back():
    """The requester keeps the association open and does not answer the N-EVENT-REPORT. The
    report's sender would wait its DIMSE timeout (60 s), longer than the drain: the node aborts
    what is still open when the drain's time is up, which ends that wait, and the request is
    handed back before the node exits."""
    from pynetdicom import evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    archive = UnansweredCommitment()
    node = DicomNode(archive, NodeSettings("SONOLOOP", "127.0.0.1", free_port(), acse_timeout=30))
    node.start(block=False)
    reported = threading.Event()

    def on_report(event):  # takes the report and answers only after the node has stopped
        reported.set()
        time.sleep(8)
        return 0x0000, None

    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)
        association = ae.associate("127.0.0.1", node.settings.port, ae_title="SONOLOOP",
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        status = _request_commitment(association)
        assert status.Status == 0x0000 and reported.wait(5)
        started = time.monotonic()
        node.drain(timeout=1)
        assert archive.handed_back.is_set() and archive.answers == [None]
        assert time.monotonic() - started < 10  # not the 60 s DIMSE timeout
        assert association.is_aborted
    finally:
        node.stop()
