"""The node's own networking, with an archive that answers only who may echo.

With SONOLOOP_TEST_NODE_TUNING=1 this module runs under the node process's pynetdicom tuning
(tests/dicom/test_tuning.py does so in a subprocess: the tuning is process-wide)."""

import os
import socket
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from sonoloop.dicom.archive import Permissions
from sonoloop.dicom.node import DicomNode, NodeSettings
from tests.conftest import free_port

if os.environ.get("SONOLOOP_TEST_NODE_TUNING") == "1":
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
