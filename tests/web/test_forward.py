"""Results (SEG and SR) sent by C-STORE to peers that receive them; failures retried with
back-off and visible."""

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from sonoloop.web.analysis import services
from sonoloop.web.analysis.models import AnalysisJob, ResultForward
from sonoloop.web.archive.services import instance_store, peer_add
from tests.conftest import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    """A real DICOM storage SCP (pynetdicom) that keeps what it receives."""
    received = []

    def on_store(event):
        received.append(event.dataset.SOPClassUID)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(SegmentationStorage)
    ae.add_supported_context(Comprehensive3DSRStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, received
    server.shutdown()


def analysed(samples):
    instance = instance_store(samples["cine_30"].read_bytes()).instance
    services.job_run(AnalysisJob.objects.get(instance=instance).pk)
    return instance


def test_results_are_sent_to_peers_that_receive_them(config, samples, receiver):
    port, received = receiver
    peer_add("PACS", "127.0.0.1", port, may_store=False, may_query=False, is_move_destination=False,
             receives_results=True)
    peer_add("OTHER", "127.0.0.1", 1, may_store=True, may_query=True, is_move_destination=True)  # not a result peer
    instance = analysed(samples)
    forwards = list(ResultForward.objects.all())
    assert sorted(f.what for f in forwards) == ["SEG", "SR"] and {f.peer.ae_title for f in forwards} == {"PACS"}
    for forward in forwards:  # what the worker does with the queued tasks
        assert services.forward_run(forward.pk) == ResultForward.SENT
    assert sorted(received) == sorted([SegmentationStorage, Comprehensive3DSRStorage])
    result = instance.analysis_results.get()
    assert {f["status"] for f in services.result_summary(result)["forwards"]} == {"sent"}


def test_a_peer_that_is_down_is_retried_with_back_off_then_marked_failed(config, samples):
    dead_port = free_port()  # nothing listens here
    peer_add("DOWN", "127.0.0.1", dead_port, may_store=False, may_query=False, is_move_destination=False,
             receives_results=True)
    analysed(samples)
    forward = ResultForward.objects.get(what="SEG")
    delays = []
    for attempt in range(1, services.FORWARD_ATTEMPTS + 1):
        before = timezone.now()
        status = services.forward_run(forward.pk)
        forward.refresh_from_db()
        assert forward.attempts == attempt and forward.last_error.startswith("cannot connect to DOWN at 127.0.0.1")
        if attempt < services.FORWARD_ATTEMPTS:
            assert status == ResultForward.RETRYING
            delays.append(round((forward.next_attempt_at - before).total_seconds()))
            later = DBTaskResult.objects.filter(task_path__endswith="forward_result", args_kwargs__args=[forward.pk],
                                                status="READY").order_by("-enqueued_at").first()
            assert later is not None and later.run_after >= forward.next_attempt_at - timezone.timedelta(seconds=1)
    assert status == ResultForward.FAILED and forward.next_attempt_at is None
    assert delays == [10, 20, 40, 80, 160]
    assert services.forward_run(forward.pk) == ResultForward.FAILED  # a stale task does nothing more
    assert ResultForward.objects.get(pk=forward.pk).attempts == services.FORWARD_ATTEMPTS
