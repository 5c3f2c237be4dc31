"""The DICOM node: a pynetdicom AE whose handlers persist, record and answer with a status.

Handlers never do heavy work; they call the :class:`Archive` (implemented by the web
app's archive services) and map its errors to DICOM statuses, logging the peer and the
SOP Instance UID for every failure.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom import sop_class as sop_classes
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from . import commitment, status, tls
from .archive import Archive, Located, Permissions
from .filestore import StorageFull
from .instance import InvalidInstance
from .query import Query, QueryError, build_response, check_retrieve_keys, parse_identifier
from .reactor import keep_responses
from .storelane import StoreLane

log = logging.getLogger("sonoloop.dicom")

# Transfer syntaxes stored as sent (PS3.5 Annex A).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old machines)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

RETIRED_ULTRASOUND = {
    "UltrasoundImageStorageRetired": "1.2.840.10008.5.1.4.1.1.6",
    "UltrasoundMultiFrameImageStorageRetired": "1.2.840.10008.5.1.4.1.1.3",
}

STORAGE_SOP_CLASSES = sorted({c.abstract_syntax for c in AllStoragePresentationContexts} | set(RETIRED_ULTRASOUND.values()))
_STORAGE = frozenset(STORAGE_SOP_CLASSES)


def register_retired_storage() -> None:
    """Teach pynetdicom that the retired ultrasound classes are storage classes.

    pynetdicom accepts their presentation contexts but has no service class for them and
    aborts the association on the first C-STORE ("No supported service class"). Called
    when a node is built, not on import; registering again is harmless.
    """
    for keyword, uid in RETIRED_ULTRASOUND.items():
        if sop_classes.uid_to_service_class(uid) is not StorageServiceClass:
            sop_classes.register_uid(uid, keyword, StorageServiceClass)

FIND_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: "PATIENT",
    StudyRootQueryRetrieveInformationModelFind: "STUDY",
}
GET_MODELS = {
    PatientRootQueryRetrieveInformationModelGet: "PATIENT",
    StudyRootQueryRetrieveInformationModelGet: "STUDY",
}
MOVE_MODELS = {
    PatientRootQueryRetrieveInformationModelMove: "PATIENT",
    StudyRootQueryRetrieveInformationModelMove: "STUDY",
}




@dataclass(frozen=True)
class NodeSettings:
    ae_title: str
    host: str
    port: int
    max_associations: int = 16
    max_associations_per_host: int = 8  # one host cannot take every slot from the modalities
    acse_timeout: int = 30
    dimse_timeout: int = 60
    network_timeout: int = 120
    max_pdu: int = 0
    max_instance_bytes: int = 2 * 1024**3
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""


def move_contexts(located: list[Located]) -> list:
    """Presentation contexts for a C-MOVE sub-association: each SOP class in its stored syntax,
    plus the uncompressed syntaxes pynetdicom can convert native data to."""
    wanted: dict[str, set[str]] = {}
    for item in located:
        wanted.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in sorted(wanted.items()):
        compressed = sorted(syntaxes - set(TRANSFER_SYNTAXES[:2]))
        for syntax in compressed:
            contexts.append(build_context(sop_class, [syntax]))
        contexts.append(build_context(sop_class, TRANSFER_SYNTAXES[:2]))
    return contexts


class _HandshakeInAssociation(ThreadedAssociationServer):
    """pynetdicom runs the TLS handshake in its accept loop (``get_request``): one client that
    connects and never sends a ClientHello stops every other association from being accepted.
    Here the socket is wrapped without the handshake, which then runs on the first read in the
    association's own thread, where the ACSE timeout ends a silent client."""

    def get_request(self):
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True,
                                                         do_handshake_on_connect=False)
        return client_socket, address


def receive_into_files(folder: Path) -> None:
    """Have pynetdicom write each incoming C-STORE dataset to a file in ``folder`` as it arrives
    (DICOM file format) instead of buffering it in memory several times over. Process-wide: the
    DICOM node's command calls it; senders and the web server are left as they are."""
    import tempfile

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for leftover in folder.glob("*.dcm"):  # a crash's spool files: no association is open yet
        leftover.unlink(missing_ok=True)
    tempfile.tempdir = str(folder)
    _config.STORE_RECV_CHUNKED_DATASET = True


def _received(event) -> bytes:
    """The received instance as a DICOM file: from pynetdicom's spool file, or its buffer."""
    path = getattr(event, "dataset_path", None)  # None (or missing) when pynetdicom buffered it
    if path is None:
        return event.encoded_dataset(include_meta=True)
    return Path(path).read_bytes()


# bytes of one DIMSE message beyond the instance limit: its command set and PDU headers
_MESSAGE_HEADROOM = 1024 * 1024
# how long a stopping node waits, after aborting what is still open, for reports to be handed back
HAND_BACK_SECONDS = 3.0  # within the supervisor's 25 s grace, after the 20 s drain


def _peer(event) -> tuple[str, str]:
    return _peer_of(event.assoc)


def _peer_of(assoc) -> tuple[str, str]:
    requestor = assoc.requestor
    return requestor.ae_title, requestor.address


class DicomNode:
    def __init__(self, archive: Archive, settings: NodeSettings):
        self.archive = archive
        self.settings = settings
        self.ae = self._build_ae()
        self.server = None
        self._per_host: dict[str, int] = {}
        self._per_host_lock = threading.Lock()
        self._responses: dict[tuple[int, int], threading.Event] = {}  # N-ACTIONs awaiting their response
        self._reporting: set[threading.Thread] = set()  # storage commitment reports on requesters' associations

    def _build_ae(self) -> AE:
        s = self.settings
        register_retired_storage()
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_pdu_size = s.max_pdu
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES[:3])
        # Role selection is agreed to as proposed: C-GET requestors act as Storage SCP
        # and take the C-STORE sub-operations back over the same association.
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for model in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS):
            ae.add_supported_context(model, TRANSFER_SYNTAXES[:3])
        # storage commitment: a requester that proposes the SCP role for itself gets it
        ae.add_supported_context(StorageCommitmentPushModel, TRANSFER_SYNTAXES[:3], scu_role=True, scp_role=True)
        return ae

    def handlers(self) -> list:
        return [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_FIND, self.handle_find),
            (evt.EVT_C_GET, self.handle_get),
            (evt.EVT_C_MOVE, self.handle_move),
            (evt.EVT_N_ACTION, self.handle_commitment),
            (evt.EVT_DIMSE_SENT, self._message_sent),
            (evt.EVT_ESTABLISHED, self._established),
            (evt.EVT_DATA_RECV, self._count_received),
            (evt.EVT_DIMSE_RECV, self._message_received),
            (evt.EVT_RELEASED, self._ended),
            (evt.EVT_ABORTED, self._ended),
            (evt.EVT_CONN_CLOSE, self._ended),
        ]

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        return tls.server_context(s.tls_cert, s.tls_key, s.tls_ca) if s.tls_cert else None

    def _client_tls(self, host: str) -> tuple[ssl.SSLContext, str]:
        s = self.settings
        return tls.client_context(s.tls_cert, s.tls_key, s.tls_ca), host

    def start(self, block: bool = True):
        s = self.settings
        self.server = self.ae.make_server((s.host, s.port), evt_handlers=self.handlers(),
                                          ssl_context=self._ssl_context(), server_class=_HandshakeInAssociation)
        self.ae._servers.append(self.server)
        if block:
            self.server.serve_forever()
        else:
            threading.Thread(target=self.server.serve_forever, name="dicom-accept", daemon=True).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for open associations to end, and for storage commitment
        reports under way on them to be recorded as sent or handed back to the queued task (a
        request left claimed by a stopped node waits minutes for the task), then abort what is
        still open (which ends a report's wait for its answer, so it is handed back too) and
        shut down."""
        deadline = time.monotonic() + timeout
        while self.server is not None and self.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for thread in list(self._reporting):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.server is not None:
            for association in self.server.active_associations:
                log.warning("association from %s still open after %.0f s of draining: aborted",
                            association.requestor.ae_title, timeout)
                association.abort()
        for thread in list(self._reporting):
            thread.join(HAND_BACK_SECONDS)
        if self._reporting:
            log.warning("%d storage commitment reports were still under way at the stop: their requests stay "
                        "claimed for minutes before the queued task reports them", len(self._reporting))
        self.stop()

    # -- handlers ---------------------------------------------------------------------------

    def _established(self, event) -> None:
        keep_responses(event.assoc)  # before its reactor runs; dicom.tuning also does it, when it applies
        calling_ae, address = _peer(event)
        with self._per_host_lock:
            open_here = self._per_host.get(address, 0) + 1
            self._per_host[address] = open_here
        event.assoc._sonoloop_counted = True
        if open_here > self.settings.max_associations_per_host:
            log.warning("association from %s at %s aborted: %d associations from that host are open (limit %d)",
                        calling_ae, address, open_here - 1, self.settings.max_associations_per_host)
            event.assoc.abort()
            return
        permissions = self._permissions(event)
        if not (permissions.echo or permissions.store or permissions.query):
            log.warning("association from %s at %s aborted: not a known peer from its host", calling_ae, address)
            event.assoc.abort()
            return
        if permissions.store:
            event.assoc._sonoloop_lane = self._store_lane(event.assoc)

    def _store_lane(self, assoc) -> StoreLane:
        """Plain C-STORE requests taken off the wire in the association's DUL thread (when the
        node's process has :mod:`~sonoloop.dicom.tuning` applied; otherwise unused). Its stores
        run in that thread, so that thread's part of :meth:`Archive.association_ended` runs there
        too, when the lane closes."""
        contexts = {cx.context_id: (cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
                    if cx.as_scp and cx.abstract_syntax in _STORAGE}
        return StoreLane(
            contexts,
            lambda request, raw, sha256: self._store(assoc, request.sop_class_uid, request.sop_instance_uid,
                                                     lambda: raw, sha256),
            self.settings.max_instance_bytes + _MESSAGE_HEADROOM,
            on_close=self.archive.association_ended,
        )

    def _uncount(self, event) -> None:
        if getattr(event.assoc, "_sonoloop_counted", False):
            event.assoc._sonoloop_counted = False
            address = _peer(event)[1]
            with self._per_host_lock:
                left = self._per_host.get(address, 1) - 1
                if left > 0:
                    self._per_host[address] = left
                else:
                    self._per_host.pop(address, None)

    # -- the size limit while receiving: nothing is held in memory, and an oversized dataset
    # -- is cut off at the limit instead of being written out whole

    def _count_received(self, event) -> None:
        assoc = event.assoc
        received = getattr(assoc, "_sonoloop_received", 0) + len(event.data)
        assoc._sonoloop_received = received
        if received > self.settings.max_instance_bytes + _MESSAGE_HEADROOM and not getattr(assoc, "_sonoloop_cut", False):
            assoc._sonoloop_cut = True
            calling_ae, address = _peer(event)
            log.error("C-STORE from %s (%s): more than the %d-byte instance limit arrived; association aborted",
                      calling_ae, address, self.settings.max_instance_bytes)
            assoc.abort()

    @staticmethod
    def _message_received(event) -> None:
        event.assoc._sonoloop_received = 0

    def _ended(self, event) -> None:
        self._uncount(event)
        if event.event is evt.EVT_CONN_CLOSE and getattr(event.assoc.requestor, "primitive", None) is None:
            # Closed before any A-ASSOCIATE-RQ came (a port probe, a health check): pynetdicom's
            # acceptor would wait out the whole ACSE timeout for a request that cannot come,
            # holding a thread and delaying shutdown. An empty item wakes it, as its timeout would.
            event.assoc.dul.to_user_queue.put(None)
        # a C-STORE cut off mid-way leaves pynetdicom's spool file behind
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        spooled = getattr(message, "_data_set_path", None)
        if isinstance(spooled, Path):
            spooled.unlink(missing_ok=True)
        self.archive.association_ended()

    def _permissions(self, event) -> Permissions:
        return self._permissions_of(event.assoc)

    def _permissions_of(self, assoc) -> Permissions:
        """Looked up once per association (a peer sends hundreds of instances in one)."""
        cached = getattr(assoc, "_sonoloop_permissions", None)
        if cached is None:
            calling_ae, address = _peer_of(assoc)
            names = tls.certificate_names(getattr(assoc.dul.socket, "socket", None))
            cached = self.archive.permissions(calling_ae, address, names)
            assoc._sonoloop_permissions = cached
        return cached

    def handle_echo(self, event) -> int:
        if not self._permissions(event).echo:
            calling_ae, address = _peer(event)
            log.warning("C-ECHO refused: %s at %s is not a known peer", calling_ae, address)
            return status.NOT_AUTHORIZED
        return status.SUCCESS

    def handle_store(self, event) -> int:
        request = event.request
        return self._store(event.assoc, str(request.AffectedSOPClassUID or ""),
                           str(request.AffectedSOPInstanceUID or ""), lambda: _received(event))

    def _store(self, assoc, sop_class_uid: str, sop_uid: str, received, sha256: str | None = None) -> int:
        """One C-STORE request (from pynetdicom's handler or the store lane): its status."""
        calling_ae, address = _peer_of(assoc)
        permissions = self._permissions_of(assoc)
        if not permissions.store:
            log.warning("C-STORE refused: %s at %s may not store (SOP Instance %s)", calling_ae, address, sop_uid)
            return status.NOT_AUTHORIZED
        raw = received()
        if len(raw) > self.settings.max_instance_bytes:
            log.error(
                "C-STORE from %s rejected: SOP Instance %s is %d bytes, over the %d-byte limit",
                calling_ae, sop_uid, len(raw), self.settings.max_instance_bytes,
            )
            return status.TOO_LARGE
        try:
            return self.archive.store(
                raw,
                calling_ae=calling_ae,
                address=address,
                expected=(sop_class_uid, sop_uid),
                may_correct=permissions.correct,
                sha256=sha256,
            )
        except InvalidInstance as exc:
            log.error("C-STORE from %s (%s) rejected: SOP Instance %s: %s", calling_ae, address, exc.sop_instance_uid or sop_uid, exc)
            return exc.status
        except StorageFull as exc:
            log.error("C-STORE from %s refused: SOP Instance %s: %s", calling_ae, sop_uid, exc.strerror or exc)
            return exc.status
        except Exception:
            log.exception("C-STORE from %s failed while storing SOP Instance %s", calling_ae, sop_uid)
            return status.OUT_OF_RESOURCES

    def handle_commitment(self, event) -> tuple[int, None]:
        """Storage Commitment Push Model N-ACTION: the request is recorded (and its report on
        a new association queued) before it is acknowledged; the report then goes out on
        this association if the requester keeps it open."""
        calling_ae, address = _peer(event)
        request = event.request
        if not self._permissions(event).store:
            log.warning("storage commitment refused: %s at %s may not store", calling_ae, address)
            return status.NOT_AUTHORIZED, None
        if request.RequestedSOPClassUID != StorageCommitmentPushModel:
            return status.SOP_CLASS_NOT_SUPPORTED, None
        try:
            transaction_uid, references = commitment.read_request(request.ActionTypeID, event.action_information)
        except commitment.CommitmentRequestError as exc:
            log.error("storage commitment from %s (%s) refused: %s", calling_ae, address, exc)
            return exc.status, None
        except Exception as exc:  # the Action Information does not decode
            log.error("storage commitment from %s (%s) refused: %s", calling_ae, address, exc)
            return status.INVALID_ARGUMENT, None
        try:
            request_id = self.archive.commitment_request(transaction_uid, references, calling_ae=calling_ae,
                                                         address=address)
        except Exception:
            log.exception("storage commitment %s from %s could not be recorded", transaction_uid, calling_ae)
            return status.PROCESSING_FAILURE, None
        sent = threading.Event()
        self._responses[(id(event.assoc), request.MessageID)] = sent
        reporter = threading.Thread(target=self._report_here, args=(event.assoc, request.MessageID, request_id, sent),
                                    name="commitment-report", daemon=True)
        self._reporting.add(reporter)
        reporter.start()
        return status.SUCCESS, None

    def _message_sent(self, event) -> None:
        command = event.message.command_set
        if command.CommandField == 0x8130:  # N-ACTION-RSP: the requester has its answer
            sent = self._responses.pop((id(event.assoc), command.MessageIDBeingRespondedTo), None)
            if sent is not None:
                sent.set()

    def _report_here(self, assoc, message_id: int, request_id: int, sent: threading.Event) -> None:
        """After the N-ACTION response: the report on the same association, if it is still open;
        otherwise (or if the requester does not take it there) the queued task sends it."""
        try:
            answered = sent.wait(self.settings.dimse_timeout)
            self._responses.pop((id(assoc), message_id), None)
            if not answered or not assoc.is_established:
                return
            self.archive.commitment_report_here(request_id, lambda outcome: commitment.send_on(assoc, outcome))
        except Exception:
            log.exception("storage commitment %s: the report on the requester's association failed", request_id)
        finally:
            self._reporting.discard(threading.current_thread())

    def _query(self, event, models: dict, service: str) -> Query | int:
        calling_ae, address = _peer(event)
        if not self._permissions(event).query:
            log.warning("%s refused: %s at %s may not query or retrieve", service, calling_ae, address)
            return status.NOT_AUTHORIZED
        try:
            root = models[event.context.abstract_syntax]
            query = parse_identifier(event.identifier, root)
            if service != "C-FIND":
                check_retrieve_keys(query)
            return query
        except QueryError as exc:
            log.warning("%s from %s: bad identifier: %s", service, calling_ae, exc)
            return status.QR_IDENTIFIER_DOES_NOT_MATCH
        except Exception as exc:
            log.warning("%s from %s: identifier cannot be decoded: %s", service, calling_ae, exc)
            return status.QR_UNABLE_TO_PROCESS

    def handle_find(self, event) -> Iterator:
        query = self._query(event, FIND_MODELS, "C-FIND")
        if isinstance(query, int):
            yield query, None
            return
        try:
            calling_ae, address = _peer(event)
            records = self.archive.find(query, calling_ae=calling_ae, address=address)
            for record in records:
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                yield status.PENDING, build_response(query, record)
        except Exception:
            log.exception("C-FIND from %s failed", _peer(event)[0])
            yield status.QR_UNABLE_TO_PROCESS, None
            return
        yield status.SUCCESS, None

    def _datasets(self, event, located: list[Located]) -> Iterator:
        for item in located:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            try:
                yield status.PENDING, self._as_negotiated(event, item)
            except Exception as exc:  # a file unreadable on disk counts as a failed sub-operation
                log.error("stored file %s cannot be sent: %s", item.path.name, exc)
                yield status.PENDING, None

    @staticmethod
    def _as_negotiated(event, item: Located) -> Dataset:
        """The stored dataset, decompressed only when the peer accepted no context for its syntax."""
        ds = dcmread(item.path)
        if item.transfer_syntax_uid in TRANSFER_SYNTAXES[:2] or event.event.name != "EVT_C_GET":
            return ds
        accepted = {
            cx.transfer_syntax[0]
            for cx in event.assoc.accepted_contexts
            if cx.abstract_syntax == item.sop_class_uid and cx.as_scu
        }
        if item.transfer_syntax_uid not in accepted and accepted & set(TRANSFER_SYNTAXES[:2]):
            ds.decompress(generate_instance_uid=False)  # a change of transfer syntax keeps the identity
        return ds

    def handle_get(self, event) -> Iterator:
        query = self._query(event, GET_MODELS, "C-GET")
        if isinstance(query, int):
            yield query, None
            return
        calling_ae, address = _peer(event)
        located = self.archive.locate(query, calling_ae=calling_ae, address=address, how="C-GET")
        yield len(located)
        yield from self._datasets(event, located)

    def handle_move(self, event) -> Iterator:
        query = self._query(event, MOVE_MODELS, "C-MOVE")
        if isinstance(query, int):
            # pynetdicom connects to the destination before it reads any status, so a
            # refusal has to end the handler here: it answers 0xC515 (unable to process).
            raise PermissionError(f"C-MOVE refused with status 0x{query:04X}")
        destination_ae = event.move_destination.decode("ascii", "replace").strip() if isinstance(event.move_destination, bytes) else str(event.move_destination).strip()
        destination = self.archive.move_destination(destination_ae)
        if destination is None:
            log.warning("C-MOVE from %s: destination %s is not a configured move destination", _peer(event)[0], destination_ae)
            yield None, None
            return
        calling_ae, address = _peer(event)
        located = self.archive.locate(query, calling_ae=calling_ae, address=address, how=f"C-MOVE to {destination_ae}")
        if len(move_contexts(located)) > 128:
            log.warning("C-MOVE to %s needs more than 128 presentation contexts", destination_ae)
            yield None, None
            return
        how = {"ae_title": destination.ae_title, "contexts": move_contexts(located)}
        if destination.tls:
            how["tls_args"] = self._client_tls(destination.host)
        yield destination.host, destination.port, how
        yield len(located)
        yield from self._datasets(event, located)
