"""Real associations on loopback: dcmtk's tools and pynetdicom against a running `sonoloop serve`."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, Verification

from sonoloop.dicom.reactor import keep_responses

from tests.conftest import free_port, make_server, require_tools, wait_for_port

pytestmark = pytest.mark.e2e

# storescu flag that proposes each file's transfer syntax.
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


@pytest.fixture(autouse=True, scope="module")
def _tools():
    require_tools("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp")


def storescu(server, path: Path, aet: str = "STORESCU") -> subprocess.CompletedProcess:
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    flags = [PROPOSE[syntax]] if syntax in PROPOSE else []
    return subprocess.run(
        ["storescu", "-v", "-R", *flags, "-aet", aet, "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port), str(path)],
        capture_output=True, text=True, timeout=120,
    )


def findscu(server, model: str, keys: list[str], out: Path, aet: str = "QRSCU") -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", model, "-X", "-od", str(out), "-aet", aet, "-aec", server.ae_title]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run([*args, "127.0.0.1", str(server.dicom_port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    responses = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    for p in out.glob("rsp*.dcm"):
        p.unlink()
    return responses


@pytest.fixture(scope="module")
def loaded(server, samples):
    """Every sample stored with storescu; the query peer registered with the CLI. The cuts of the
    120-frame cine are left out: the 30-frame one has its SOP Instance UID (it would replace it),
    and the 60-frame one is a second instance of the same patient and study."""
    server.cli("peer", "add", "QRSCU", "--host", "127.0.0.1", "--port", "1", "--query")
    samples = {key: path for key, path in samples.items() if key not in ("cine_30", "cine_60")}
    for key, path in samples.items():
        result = storescu(server, path)
        assert result.returncode == 0 and "E:" not in result.stderr, f"{key}: {result.stderr}"
    return samples


def test_echoscu_gets_success(server):
    result = subprocess.run(["echoscu", "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_every_stored_file_is_indexed_and_kept_as_sent(server, loaded, tmp_path):
    stored = {}
    for path in (server.data_dir / "objects").rglob("*.dcm"):
        ds = dcmread(path)
        stored[ds.SOPInstanceUID] = ds
    assert len(stored) == len(loaded)
    for key, path in loaded.items():
        source = dcmread(path)
        found = findscu(server, "-S", ["QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={source.SOPInstanceUID}",
                                       "StudyInstanceUID", "SeriesInstanceUID"], tmp_path)
        assert len(found) == 1, key
        copy = stored[source.SOPInstanceUID]
        # As sent: same transfer syntax, same pixel bytes (no transcoding), same attributes.
        assert copy.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID, key
        assert copy.get("PixelData") == source.get("PixelData"), key
        padding = 0xFFFCFFFC  # dcmtk drops trailing Data Set Trailing Padding when it sends
        assert {e.tag for e in copy} - {padding} == {e.tag for e in source} - {padding}, key


def test_cfind_study_root_with_date_range_and_wildcard(server, loaded, tmp_path):
    studies = findscu(server, "-S", ["QueryRetrieveLevel=STUDY", "StudyDate=20040101-20111231", "PatientName",
                                     "StudyInstanceUID", "ModalitiesInStudy"], tmp_path)
    assert {str(s.PatientName) for s in studies} >= {"CompressedSamples^US1", "OB^^^^"}
    assert all("20040101" <= s.StudyDate <= "20111231" for s in studies)
    wild = findscu(server, "-S", ["QueryRetrieveLevel=STUDY", "PatientName=Compressed*^U?1", "StudyInstanceUID"], tmp_path)
    assert {str(s.PatientName) for s in wild} == {"CompressedSamples^US1"}
    assert [e.keyword for e in wild[0] if e.keyword not in ("SpecificCharacterSet", "RetrieveAETitle")] == \
        ["QueryRetrieveLevel", "PatientName", "StudyInstanceUID"]


def test_cfind_patient_root_levels(server, loaded, tmp_path):
    patients = findscu(server, "-P", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=PLA",
                                      "NumberOfPatientRelatedInstances"], tmp_path)
    assert len(patients) == 1 and patients[0].NumberOfPatientRelatedInstances == 1
    pid = patients[0].PatientID
    studies = findscu(server, "-P", ["QueryRetrieveLevel=STUDY", f"PatientID={pid}", "StudyInstanceUID"], tmp_path)
    study = studies[0].StudyInstanceUID
    series = findscu(server, "-P", ["QueryRetrieveLevel=SERIES", f"PatientID={pid}", f"StudyInstanceUID={study}",
                                    "SeriesInstanceUID", "Modality"], tmp_path)
    assert [s.Modality for s in series] == ["US"]
    images = findscu(server, "-P", ["QueryRetrieveLevel=IMAGE", f"PatientID={pid}", f"StudyInstanceUID={study}",
                                    f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID",
                                    "NumberOfFrames"], tmp_path)
    assert len(images) == 1 and int(images[0].NumberOfFrames) == 120


def test_cfind_from_an_unknown_ae_is_refused(server, loaded, tmp_path):
    result = subprocess.run(
        ["findscu", "-v", "-S", "-aet", "STRANGER", "-aec", server.ae_title, "-k", "QueryRetrieveLevel=STUDY",
         "-k", "StudyInstanceUID", "127.0.0.1", str(server.dicom_port)],
        capture_output=True, text=True, timeout=60,
    )
    assert re.search(r"Final Find Response \(.*0x0?124\)", result.stderr), result.stderr
    assert "C-FIND refused: STRANGER" in server.log()


def test_dicom_stores_queries_and_retrievals_reach_the_access_trail(server, loaded, tmp_path):
    findscu(server, "-S", ["QueryRetrieveLevel=STUDY", "PatientName=PLA*", "StudyInstanceUID"], tmp_path)
    lines = server.cli("manage", "audit_export").stdout.splitlines()
    received = [line for line in lines if 'csd-code="110104"' in line and 'EventActionCode="C"' in line]
    # one event per association and study: every sample went in its own association
    assert len(received) >= len(loaded) and all('UserID="STORESCU"' in line for line in received)
    assert any('csd-code="110112"' in line and 'UserID="QRSCU"' in line for line in lines)


def test_cget_retrieves_the_cine_loop_intact(server, loaded, tmp_path):
    cine = dcmread(loaded["cine_jpeg"], stop_before_pixels=True)
    result = subprocess.run(
        ["getscu", "-S", "+xy", "-aet", "QRSCU", "-aec", server.ae_title, "-od", str(tmp_path),
         "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={cine.StudyInstanceUID}",
         "-k", f"SeriesInstanceUID={cine.SeriesInstanceUID}", "127.0.0.1", str(server.dicom_port)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (got,) = list(tmp_path.iterdir())
    received = dcmread(got)
    original = dcmread(loaded["cine_jpeg"])
    assert received.SOPInstanceUID == original.SOPInstanceUID
    # pynetdicom accepted Explicit VR Little Endian first, so the loop came back decoded.
    assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert int(received.NumberOfFrames) == 120
    assert (received.pixel_array == original.pixel_array).all()


def test_cget_of_everything_is_refused_and_sends_nothing(server, loaded, tmp_path):
    """The review's `getscu -k QueryRetrieveLevel=PATIENT`: a retrieve must name what it wants."""
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run(
        ["getscu", "-v", "-P", "-aet", "QRSCU", "-aec", server.ae_title, "-od", str(out),
         "-k", "QueryRetrieveLevel=PATIENT", "127.0.0.1", str(server.dicom_port)],
        capture_output=True, text=True, timeout=60,
    )
    assert list(out.iterdir()) == [], result.stderr
    assert "must name PatientID" in server.log()


def test_cmove_sends_to_a_configured_destination_only(server, loaded, tmp_path):
    dest_port = free_port()
    out = tmp_path / "dest"
    out.mkdir()
    scp = subprocess.Popen(["storescp", "+xa", "-aet", "DEST", "-od", str(out), str(dest_port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(dest_port, 20)
        server.cli("peer", "add", "DEST", "--host", "127.0.0.1", "--port", str(dest_port), "--move-destination")
        study = dcmread(loaded["us_j2k"], stop_before_pixels=True).StudyInstanceUID
        move = ["movescu", "-S", "-aet", "QRSCU", "-aec", server.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.dicom_port)]
        result = subprocess.run([*move[:1], "-aem", "DEST", *move[1:]], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        received = {dcmread(f).SOPInstanceUID: dcmread(f) for f in out.iterdir()}
        same_study = [p for p in loaded.values() if dcmread(p, stop_before_pixels=True).StudyInstanceUID == study]
        assert len(received) == len(same_study) == 2  # US1_J2KR and US1_UNCR share a study
        for path in same_study:
            source = dcmread(path)
            assert received[source.SOPInstanceUID].PixelData == source.PixelData
        unknown = subprocess.run([*move[:1], "-aem", "NOWHERE", *move[1:]], capture_output=True, text=True, timeout=60)
        assert "Refused: MoveDestinationUnknown" in unknown.stderr, unknown.stderr
    finally:
        scp.terminate()
        scp.wait(10)


# -- bad input -------------------------------------------------------------------------------------


def _associate(server, contexts, aet="BADSCU"):
    ae = AE(ae_title=aet)
    assoc = ae.associate("127.0.0.1", server.dicom_port, contexts=contexts, ae_title=server.ae_title)
    assert assoc.is_established
    keep_responses(assoc)  # several messages on one association (see sonoloop.dicom.reactor)
    return assoc


def test_truncated_dataset_gets_a_failure_status_and_nothing_is_indexed(server, loaded, tmp_path, monkeypatch):
    source = loaded["us_native"].read_bytes()
    ds = dcmread(loaded["us_native"])
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.999001"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    full = tmp_path / "full.dcm"
    ds.save_as(full, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(full.read_bytes()[: len(source) // 2])
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    assoc = _associate(server, [build_context(UltrasoundImageStorage, "1.2.840.10008.1.2.1")])
    try:
        answer = assoc.send_c_store(truncated)
    finally:
        assoc.release()
    assert 0xC000 <= answer.Status <= 0xCFFF
    found = findscu(server, "-S", ["QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={ds.SOPInstanceUID}"], tmp_path / "q")
    assert found == []
    log = server.log()
    assert "BADSCU" in log and "1.2.826.0.1.3680043.8.498.999001" in log
    assert list((server.data_dir / "tmp").glob("*.part")) == []


def test_missing_uid_gets_a_failure_status_and_the_node_keeps_serving(server, loaded):
    ds = dcmread(loaded["us_rle_palette"])
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.999002"
    assoc = _associate(server, [build_context(UltrasoundImageStorage, "1.2.840.10008.1.2.5"),
                                build_context(Verification)])
    try:
        answer = assoc.send_c_store(ds)
        assert answer.Status == 0xC001
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_another_device_cannot_move_a_study_to_another_patient_or_blank_an_image(server, loaded, tmp_path):
    """The attacks of issue 12: a known Study UID under another Patient ID, and a re-send of a
    stored SOP Instance with blank pixels from another AE. Neither changes what is stored."""
    stored = dcmread(loaded["us_native"])
    hijack = dcmread(loaded["us_native"])
    hijack.PatientID, hijack.PatientName = "EVIL-1", "Someone^Else"
    hijack.SOPInstanceUID = hijack.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.999010"
    blank = dcmread(loaded["us_native"])
    blank.PixelData = bytes(len(blank.PixelData))
    assoc = _associate(server, [build_context(UltrasoundImageStorage, "1.2.840.10008.1.2.1")], aet="ROGUE")
    try:
        assert assoc.send_c_store(hijack).Status == 0x0124
        assert assoc.send_c_store(blank).Status == 0x0000  # accepted, the first copy kept
    finally:
        assoc.release()
    studies = findscu(server, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={stored.StudyInstanceUID}",
                                     "PatientID", "NumberOfStudyRelatedInstances"], tmp_path)
    assert [(s.PatientID, int(s.NumberOfStudyRelatedInstances)) for s in studies] == [(stored.PatientID, 2)]
    copies = [dcmread(p) for p in (server.data_dir / "objects").rglob("*.dcm")]
    kept = [c for c in copies if c.SOPInstanceUID == stored.SOPInstanceUID]
    assert len(kept) == 1 and kept[0].PixelData == stored.PixelData
    assert "EVIL-1" not in {c.PatientID for c in copies}
    assert "study " + stored.StudyInstanceUID + " belongs to another patient" in server.log()


def test_a_fresh_node_lets_unknown_aes_echo_and_registered_peers_store_and_query_from_their_host(tmp_path, samples):
    srv = make_server(tmp_path, SONOLOOP_DICOM_OPEN_STORE="0").start()
    try:
        echo = subprocess.run(["echoscu", "-aet", "LAPTOP", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        refused = storescu(srv, samples["us_rle_palette"], aet="LAPTOP")
        assert re.search(r"Store Response \(.*0x0?124\)", refused.stderr), refused.stderr
        assert list((srv.data_dir / "objects").rglob("*.dcm")) == []
        srv.cli("peer", "add", "MODALITY1", "--host", "127.0.0.1", "--port", "104", "--store")
        assert storescu(srv, samples["us_rle_palette"], aet="MODALITY1").returncode == 0
        # a query peer's AE title claimed from another host gets nothing
        srv.cli("peer", "add", "PACS", "--host", "127.0.0.2", "--port", "104", "--query")
        query = ["findscu", "-v", "-S", "-aet", "PACS", "-aec", srv.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                 "-k", "StudyInstanceUID", "127.0.0.1", str(srv.dicom_port)]
        elsewhere = subprocess.run(query, capture_output=True, text=True, timeout=30)
        assert "(Pending)" not in elsewhere.stderr, elsewhere.stderr
        assert "C-FIND refused: PACS at 127.0.0.1 may not query" in srv.log()
        srv.cli("peer", "add", "PACS", "--host", "127.0.0.1", "--port", "104", "--query")
        at_home = subprocess.run(query, capture_output=True, text=True, timeout=30)
        assert at_home.returncode == 0 and "Find Response: 1 (Pending)" in at_home.stderr, at_home.stderr
    finally:
        assert srv.stop() == 0


def test_unsupported_transfer_syntax_is_rejected_at_negotiation(server):
    mpeg2 = "1.2.840.10008.1.2.4.100"
    ae = AE(ae_title="MPEGSCU")
    ae.add_requested_context(UltrasoundMultiFrameImageStorage, mpeg2)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    try:
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
        assert any(c.abstract_syntax == UltrasoundMultiFrameImageStorage for c in assoc.rejected_contexts)
    finally:
        assoc.release()


def test_an_oversized_instance_is_cut_off_while_it_arrives_and_nothing_is_kept(tmp_path, samples):
    """SONOLOOP_MAX_INSTANCE_MB=1 against the 6 MB cine: pynetdicom spools the dataset to a file
    as it arrives (nothing held in memory) and the association is aborted once the limit is
    passed; a smaller instance is refused after it arrived with A702."""
    srv = make_server(tmp_path, SONOLOOP_MAX_INSTANCE_MB="1").start()
    try:
        result = storescu(srv, samples["cine_jpeg"])
        assert "Store Response (Success" not in result.stderr, result.stderr
        assert "more than the 1048576-byte instance limit arrived" in srv.log()
        fits = dcmread(samples["us_rle_palette"])
        fits.PixelData = fits.PixelData + b"\0" * (1024 * 1024 - len(fits.PixelData) % 2)  # just over 1 MB
        assoc = _associate(srv, [build_context(fits.SOPClassUID, fits.file_meta.TransferSyntaxUID),
                                 build_context(Verification)])
        try:
            assert assoc.send_c_store(fits).Status == 0xA702
            assert assoc.send_c_echo().Status == 0x0000  # the node goes on serving
        finally:
            assoc.release()
        assert list((srv.data_dir / "objects").rglob("*.dcm")) == []
        assert [p for p in (srv.data_dir / "tmp").rglob("*") if p.is_file()] == []
    finally:
        assert srv.stop() == 0


def test_strict_mode_stores_only_from_known_peers_and_one_host_cannot_take_every_slot(tmp_path, samples):
    srv = make_server(tmp_path, SONOLOOP_DICOM_STRICT="1", SONOLOOP_DICOM_MAX_ASSOCIATIONS_PER_HOST="2").start()
    try:
        refused = storescu(srv, samples["us_rle_palette"], aet="MODALITY1")
        assert "Store Response (Success" not in refused.stderr, refused.stderr
        assert "MODALITY1 at 127.0.0.1 aborted: not a known peer from its host" in srv.log()
        assert list((srv.data_dir / "objects").rglob("*.dcm")) == []
        srv.cli("peer", "add", "MODALITY1", "--host", "127.0.0.1", "--port", "104", "--store")
        listed = srv.cli("peer", "list").stdout
        assert "MODALITY1" in listed
        accepted = storescu(srv, samples["us_rle_palette"], aet="MODALITY1")
        assert accepted.returncode == 0 and "E:" not in accepted.stderr
        assert len(list((srv.data_dir / "objects").rglob("*.dcm"))) == 1
        ae = AE(ae_title="MODALITY1")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title) for _ in range(2)]
        assert all(a.is_established for a in held)
        third = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
        deadline = time.monotonic() + 10
        while third.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not third.is_established and "2 associations from that host are open" in srv.log()
        for a in held:
            assert a.send_c_echo().Status == 0x0000
            a.release()
        srv.cli("peer", "remove", "MODALITY1")
        bad = srv.cli("peer", "add", "WAY_TOO_LONG_AE_TITLE", "--host", "h", "--port", "1", check=False)
        assert bad.returncode != 0 and "at most 16" in bad.stderr
    finally:
        assert srv.stop() == 0


def test_tls_node_answers_echo_over_tls_only(tmp_path):
    import ssl

    require_tools("openssl")
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = make_server(tmp_path / "srv", SONOLOOP_DICOM_TLS_CERT=str(cert), SONOLOOP_DICOM_TLS_KEY=str(key)).start()
    # a client that connects and never says hello does not hold up anybody else
    silent = socket.create_connection(("127.0.0.1", srv.dicom_port))
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        context.check_hostname = False
        ae = AE(ae_title="TLSSCU")
        ae.acse_timeout = ae.network_timeout = 10
        ae.add_requested_context(Verification)
        secure = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title, tls_args=(context, None))
        assert secure.is_established
        assert secure.send_c_echo().Status == 0x0000
        secure.release()
        plain = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
        assert not plain.is_established
    finally:
        silent.close()
        assert srv.stop() == 0


def _certificates(folder: Path, *names: str, servers: tuple[str, ...] = ()) -> dict[str, tuple[Path, Path]]:
    """A test CA and, per name, a certificate it signed with that CN (servers also with
    localhost/127.0.0.1 as alternative names); ``ca`` maps to the CA's own pair."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = (folder / "ca.pem", folder / "ca.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Test CA",
                    "-keyout", str(ca[1]), "-out", str(ca[0])], check=True, capture_output=True)
    made = {"ca": ca}
    for name in (*names, *servers):
        cert, key, csr, ext = (folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr",
                               folder / f"{name}.ext")
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if name in servers else "basicConstraints=CA:FALSE\n")
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                        "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                        "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext)],
                       check=True, capture_output=True)
        made[name] = (cert, key)
    return made


def test_a_client_certificate_speaks_only_for_its_own_peer_and_c_move_goes_out_over_tls(tmp_path, samples):
    """With client certificates required, any certificate from the CA used to be good for any
    AE title; now a peer's certificate must name it. Results and C-MOVE to a peer marked for
    TLS leave over TLS, with the peer's certificate checked and Sonoloop's own presented."""
    from pynetdicom import evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    from sonoloop.dicom.tls import certificate_names, client_context, server_context

    require_tools("openssl")
    certs = _certificates(tmp_path / "pki", "MODALITY1", "INTRUDER", servers=("sonoloop-node", "ARCHIVE2"))
    ca = str(certs["ca"][0])
    node_cert, node_key = map(str, certs["sonoloop-node"])
    srv = make_server(tmp_path / "srv", SONOLOOP_DICOM_TLS_CERT=node_cert, SONOLOOP_DICOM_TLS_KEY=node_key,
                      SONOLOOP_DICOM_TLS_CA=ca, SONOLOOP_DICOM_OPEN_STORE="0").start()

    received, presented = [], []

    def on_store(event):
        presented.append(certificate_names(event.assoc.dul.socket.socket))
        received.append(event.dataset.SOPInstanceUID)
        return 0x0000

    archive2 = AE(ae_title="ARCHIVE2")
    archive2.add_supported_context(UltrasoundMultiFrameImageStorage, ["1.2.840.10008.1.2.4.50"])
    archive2.add_supported_context(UltrasoundMultiFrameImageStorage)
    archive2_port = free_port()
    scp = archive2.start_server(("127.0.0.1", archive2_port), block=False,
                                ssl_context=server_context(*map(str, certs["ARCHIVE2"]), ca),
                                evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        srv.cli("peer", "add", "MODALITY1", "--host", "127.0.0.1", "--port", "104", "--store", "--query")
        srv.cli("peer", "add", "ARCHIVE2", "--host", "127.0.0.1", "--port", str(archive2_port),
                "--move-destination", "--tls")
        cine = dcmread(samples["cine_jpeg"])

        def associate(who: str):
            context = client_context(*map(str, certs[who]), ca)
            context.check_hostname = False
            ae = AE(ae_title="MODALITY1")
            ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 20
            ae.add_requested_context(UltrasoundMultiFrameImageStorage, cine.file_meta.TransferSyntaxUID)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            association = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title, tls_args=(context, None))
            keep_responses(association)  # a store, then a move (see sonoloop.dicom.reactor)
            return association

        # another device with a certificate from the same CA claims MODALITY1: it gets nothing
        intruder = associate("INTRUDER")
        if intruder.is_established:
            status = intruder.send_c_store(cine)
            assert not status or "Status" not in status or status.Status != 0x0000, srv.log()[-3000:]
            if intruder.is_established:
                intruder.abort()
        assert "its certificate (INTRUDER) is not the one of peer MODALITY1" in srv.log()

        modality = associate("MODALITY1")
        assert modality.is_established
        assert modality.send_c_store(cine).Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = cine.StudyInstanceUID
        statuses = [s.Status for s, _ in modality.send_c_move(query, "ARCHIVE2",
                                                              StudyRootQueryRetrieveInformationModelMove) if s]
        modality.release()
        assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
        assert received == [cine.SOPInstanceUID]
        assert presented[0] is not None and "sonoloop-node" in presented[0]  # Sonoloop showed its certificate
    finally:
        scp.shutdown()
        assert srv.stop() == 0


@pytest.mark.parametrize("key, retired", [
    ("us_native", "1.2.840.10008.5.1.4.1.1.6"),  # Ultrasound Image Storage (Retired)
    ("cine_30", "1.2.840.10008.5.1.4.1.1.3"),  # Ultrasound Multi-frame Image Storage (Retired)
])
def test_retired_ultrasound_classes_are_stored_in_explicit_vr_little_endian(server, loaded, samples, tmp_path,
                                                                            key, retired):
    """Old echo machines still send the retired classes. dcmtk's storescu proposes them only
    with -R (its default context list lacks them); with -xe it offers Explicit VR Little
    Endian alone. The node used to accept the context and then abort the association."""
    from pydicom.uid import generate_uid

    ds = dcmread(samples[key])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = retired
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = "RETIRED1"
    path = tmp_path / "retired.dcm"
    ds.save_as(path, enforce_file_format=True)
    native = ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    result = subprocess.run(["storescu", "-v", "-R", "-xe" if native else PROPOSE[ds.file_meta.TransferSyntaxUID],
                             "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "E:" not in result.stderr, result.stderr
    assert "Received Store Response (Success)" in result.stderr, result.stderr
    found = findscu(server, "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ds.StudyInstanceUID}",
                                   f"SeriesInstanceUID={ds.SeriesInstanceUID}", "SOPInstanceUID", "SOPClassUID"],
                    tmp_path)
    assert [(f.SOPInstanceUID, f.SOPClassUID) for f in found] == [(ds.SOPInstanceUID, retired)]


def test_a_rejection_note_sent_by_storescu_hides_the_image_from_findscu(server, loaded, samples, tmp_path):
    """IOCM: the device that sent an image rejects it with a Key Object Selection document
    (written by highdicom, sent by dcmtk); C-FIND no longer finds it, another device cannot."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    ds = dcmread(samples["us_native"])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    image = tmp_path / "image.dcm"
    ds.save_as(image, enforce_file_format=True)
    assert storescu(server, image, aet="ECHOCART").returncode == 0
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[ds], content=hd.ko.KeyObjectSelection(document_title=codes.DCM.RejectedForQualityReasons,
                                                        referenced_objects=[ds]),
        series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="Test")
    note = tmp_path / "note.dcm"
    kos.save_as(note, enforce_file_format=True)
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ds.StudyInstanceUID}", "SeriesInstanceUID",
            "SOPInstanceUID"]

    intruder = storescu(server, note, aet="INTRUDER")
    assert "Status: 0x124" in intruder.stderr, intruder.stderr  # 0124 Refused: not authorized
    assert ds.SOPInstanceUID in {f.SOPInstanceUID for f in findscu(server, "-S", keys, tmp_path)}

    sent = storescu(server, note, aet="ECHOCART")
    assert sent.returncode == 0 and "Received Store Response (Success)" in sent.stderr, sent.stderr
    assert {f.SOPInstanceUID for f in findscu(server, "-S", keys, tmp_path)} == {kos.SOPInstanceUID}


def test_names_in_every_character_set_are_stored_decoded_and_found_in_the_requesters_own(server, loaded, tmp_path):
    """pydicom's real files in Latin-1, Greek, Japanese (ISO 2022), Korean, UTF-8 and GB18030,
    stored with storescu; pynetdicom asks in its own character set and reads the names back."""
    from pydicom.data import get_charset_files
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

    names = {}
    for name in ("chrGerm.dcm", "chrGreek.dcm", "chrH31.dcm", "chrI2.dcm", "chrX1.dcm", "chrX2.dcm"):
        (path,) = get_charset_files(name)
        ds = dcmread(path)
        ds.PatientID = f"CHR-{name[3:-4]}"
        copy = tmp_path / name
        ds.save_as(copy, enforce_file_format=True)
        sent = storescu(server, copy)
        assert sent.returncode == 0 and "E:" not in sent.stderr, sent.stderr
        names[ds.PatientID] = str(ds.PatientName)

    def find(name: str, charsets) -> list[tuple[str, object]]:
        query = Dataset()
        query.SpecificCharacterSet = charsets
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientName = name
        query.PatientID = ""
        ae = AE(ae_title="QRSCU")
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
        try:
            return [(str(ds.PatientName), ds.SpecificCharacterSet) for status, ds in
                    assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind) if ds is not None]
        finally:
            assoc.release()

    assert find("äneas*", "ISO_IR 100") == [(names["CHR-Germ"], "ISO_IR 100")]  # names ignore (ASCII) case
    assert find("Yamada*", ["", "ISO 2022 IR 87"]) == [(names["CHR-H31"], ["", "ISO 2022 IR 87"])]
    assert find("*山田*", ["", "ISO 2022 IR 87"]) == [(names["CHR-H31"], ["", "ISO 2022 IR 87"])]
    assert sorted(find("Wang*", "GB18030")) == sorted([(names["CHR-X1"], "GB18030"), (names["CHR-X2"], "GB18030")])
    assert find("Hong*", "ISO_IR 100") == [(names["CHR-I2"], "ISO_IR 192")]  # Hangul is not Latin-1: UTF-8
    assert find("Διονυσιος", "ISO_IR 126") == [(names["CHR-Greek"], "ISO_IR 126")]
