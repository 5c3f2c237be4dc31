import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from sonoloop.dicom.send import Peer, SendError, send_file
from tests.conftest import free_port


def test_a_peer_that_takes_no_segmentations_is_reported_as_such(samples):
    ae = AE(ae_title="CTONLY")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        with pytest.raises(SendError, match="CTONLY at 127.0.0.1:.* accept no presentation context for Segmentation"):
            send_file(samples["seg"], Peer("CTONLY", "127.0.0.1", port), "SONOLOOP", timeout=10)
    finally:
        server.shutdown()
    with pytest.raises(SendError, match="cannot connect to CTONLY"):
        send_file(samples["seg"], Peer("CTONLY", "127.0.0.1", port), "SONOLOOP", timeout=5)
