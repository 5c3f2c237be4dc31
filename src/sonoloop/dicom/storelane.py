"""C-STORE requests taken straight off the wire, in the association's DUL thread.

pynetdicom passes every received PDU through its state machine, a queue, the DIMSE decoder
(which spools the dataset to a temporary file with a File Meta header written by pydicom),
a second thread and an event handler, and sends the response back the same way. For a
single-frame ultrasound image that is ~6.7 ms of pynetdicom's work per C-STORE with a
handler that stores nothing (~150 files/s on the 2-core machine where Orthanc stores ~100
files/s with fsync), most of it the two threads handing the GIL back and forth.

:class:`StoreLane` takes the common case itself: on an established association, a
C-STORE-RQ on an accepted storage context in which the node is the SCP, whose command
arrives while pynetdicom has no message of its own under way. It gathers the command and
data set fragments, calls the store, and hands back the C-STORE-RSP PDU to write on the
socket from the same thread. Everything else (other messages, a command it does not
recognise, a message pynetdicom has begun) goes back to pynetdicom unchanged, as the PDUs
that arrived. A peer that breaks the protocol in the middle of a data set the lane is
gathering (a command inside it, another context, more than the size limit) gets its
association aborted, as pynetdicom aborts on a PDU it cannot accept.

Bytes in, bytes out: the patch in :mod:`sonoloop.dicom.tuning` feeds the lane the PDUs the
DUL thread reads and acts on what :meth:`StoreLane.offer` returns.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

P_DATA_TF = 0x04
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101

# Above this many bytes a data set is gathered in a spool file instead of memory, so a large
# instance is held once (when it is read back for the store), never in a growing buffer.
SPILL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class StoreRequest:
    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


# -- encoding ---------------------------------------------------------------------------------


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and File Meta Information (Explicit VR Little Endian) for a received
    data set: byte for byte what pynetdicom writes at the head of its spool file."""

    def element(number: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHL", 2, number, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, number, vr, len(value)) + value

    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        element(0x0001, b"OB", b"\x00\x01"),
        element(0x0002, b"UI", _uid(sop_class_uid)),
        element(0x0003, b"UI", _uid(sop_instance_uid)),
        element(0x0010, b"UI", _uid(transfer_syntax_uid)),
        element(0x0012, b"UI", _uid(str(PYNETDICOM_IMPLEMENTATION_UID))),
        element(0x0013, b"SH", version + b" " if len(version) % 2 else version),
    ))
    return b"\0" * 128 + b"DICM" + element(0x0000, b"UL", struct.pack("<L", len(body))) + body


def store_response(request: StoreRequest, status: int) -> bytes:
    """The C-STORE-RSP for ``request`` as one P-DATA-TF PDU (command set in Implicit VR Little
    Endian): the elements and order pynetdicom sends."""

    def us(number: int, value: int) -> bytes:
        return struct.pack("<HHLH", 0, number, 2, value)

    def ui(number: int, value: str) -> bytes:
        encoded = _uid(value)
        return struct.pack("<HHL", 0, number, len(encoded)) + encoded

    body = b"".join((
        ui(0x0002, request.sop_class_uid),
        us(0x0100, C_STORE_RSP),
        us(0x0120, request.message_id),
        us(0x0800, NO_DATA_SET),
        us(0x0900, status),
        ui(0x1000, request.sop_instance_uid),
    ))
    command = struct.pack("<HHLL", 0, 0, 4, len(body)) + body
    item = struct.pack(">LBB", len(command) + 2, request.context_id, 0x03) + command
    return struct.pack(">BBL", P_DATA_TF, 0, len(item)) + item


def p_data_tf(items: list[tuple[int, int, memoryview]]) -> bytes:
    """A P-DATA-TF PDU of these (context id, message control header, fragment) items."""
    encoded = b"".join(struct.pack(">LBB", len(fragment) + 2, context_id, control) + bytes(fragment)
                       for context_id, control, fragment in items)
    return struct.pack(">BBL", P_DATA_TF, 0, len(encoded)) + encoded


# -- decoding ---------------------------------------------------------------------------------


def pdv_items(pdu: bytes | bytearray) -> list[tuple[int, int, memoryview]] | None:
    """(presentation context id, message control header, fragment) of each item of a
    P-DATA-TF PDU, or None when it is not a well-formed one (pynetdicom then judges it)."""
    view = memoryview(pdu)
    if len(view) < 6 or view[0] != P_DATA_TF or struct.unpack_from(">L", view, 2)[0] != len(view) - 6:
        return None
    items, offset = [], 6
    while offset < len(view):
        if offset + 6 > len(view):
            return None
        length = struct.unpack_from(">L", view, offset)[0]
        end = offset + 4 + length
        if length < 2 or end > len(view) or view[offset + 5] & 0xFC:
            return None
        items.append((view[offset + 4], view[offset + 5], view[offset + 6:end]))
        offset = end
    return items or None


def command_elements(encoded: bytes | bytearray) -> dict[int, bytes] | None:
    """The elements of a command set (group 0000, Implicit VR Little Endian) by element
    number, or None when it is not one."""
    elements, offset = {}, 0
    while offset < len(encoded):
        if offset + 8 > len(encoded):
            return None
        group, number, length = struct.unpack_from("<HHL", encoded, offset)
        end = offset + 8 + length
        if group != 0 or end > len(encoded):
            return None
        elements[number] = bytes(encoded[offset + 8:end])
        offset = end
    return elements


def store_request(context_id: int, elements: dict[int, bytes], contexts: dict[int, tuple[str, str]]
                  ) -> StoreRequest | None:
    """The C-STORE-RQ these command elements make, if the lane takes it: a data set follows, and
    the context is one of ``contexts`` (id → abstract syntax, transfer syntax) for the SOP
    Class the command names."""

    def us(number: int) -> int | None:
        value = elements.get(number)
        return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None

    def ui(number: int) -> str:
        try:
            return elements.get(number, b"").rstrip(b"\0 ").decode("ascii")
        except UnicodeDecodeError:
            return ""

    if us(0x0100) != C_STORE_RQ or us(0x0800) in (None, NO_DATA_SET) or us(0x0110) is None:
        return None
    sop_class, sop_instance, context = ui(0x0002), ui(0x1000), contexts.get(context_id)
    if not sop_instance or context is None or context[0] != sop_class:
        return None
    return StoreRequest(context_id, us(0x0110), sop_class, sop_instance, context[1])


# -- the lane ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """A PDU for pynetdicom to decode and act on."""
    pdu: bytes | bytearray


@dataclass(frozen=True)
class Send:
    """A PDU to write to the peer."""
    pdu: bytes


@dataclass(frozen=True)
class Abort:
    """The peer broke the protocol: abort the association."""
    reason: str


class StoreLane:
    """One association's C-STORE requests, gathered and answered without pynetdicom's DIMSE
    layer. ``contexts``: the accepted storage contexts where the node is the SCP (id →
    abstract syntax, transfer syntax); ``store`` is called with the request, the received
    instance (a DICOM file's bytes) and their SHA-256 (hex; hashed as the fragments arrive,
    while the peer is still sending) and returns the C-STORE status; more than ``max_bytes`` of
    one data set aborts the association."""

    def __init__(self, contexts: dict[int, tuple[str, str]], store: Callable[[StoreRequest, bytes, str], int],
                 max_bytes: int, on_close: Callable[[], None] | None = None):
        self._contexts = contexts
        self._store = store
        self._max_bytes = max_bytes
        self._on_close = on_close
        self._held: list[bytes | bytearray] = []  # PDUs of a command not yet complete
        self._command = bytearray()
        self._command_context = 0
        self._request: StoreRequest | None = None
        self._data: bytearray | None = None
        self._digest = None
        self._spill: tuple[object, Path] | None = None
        self._received = 0
        self.stored = 0  # requests this lane answered
        self._aborted = False  # the association is being aborted: what still arrives is dropped

    def offer(self, pdu: bytes | bytearray, pynetdicom_idle: bool) -> list[Pass | Send | Abort]:
        """What to do with a received P-DATA-TF PDU. ``pynetdicom_idle``: pynetdicom has no
        message partly received and nothing queued, so a command starting here is the lane's
        to take."""
        if self._aborted:
            return []
        if self._request is None and not self._held and not pynetdicom_idle:
            return [Pass(pdu)]
        items = pdv_items(pdu)
        if items is None:
            if self._request is not None:
                return self._abort("a malformed P-DATA-TF PDU inside a C-STORE data set")
            return self._give_back(pdu)
        actions: list[Pass | Send | Abort] = []
        start = None  # where a command began in this PDU (None: before it, or none began)
        for index, (context_id, control, fragment) in enumerate(items):
            is_command, is_last = bool(control & 1), bool(control & 2)
            if self._request is not None:  # gathering a data set
                if is_command or context_id != self._request.context_id:
                    return actions + self._abort(f"a {'command' if is_command else 'data'} fragment on context "
                                                 f"{context_id} inside the data set of C-STORE message "
                                                 f"{self._request.message_id} (context {self._request.context_id})")
                if not self._gather(fragment):
                    return actions + self._abort(f"the data set of SOP Instance {self._request.sop_instance_uid} "
                                                 f"passed the {self._max_bytes}-byte limit")
                if is_last:
                    actions.append(Send(self._answer()))
                continue
            in_command = bool(self._held) or start is not None
            if not in_command:
                start = index
                self._command_context = context_id
            if not is_command or context_id != self._command_context:
                # not a command the lane can follow: pynetdicom's to judge, from where it began
                return actions + self._give_back(self._from(pdu, items, start))
            self._command += fragment
            if is_last:
                elements = command_elements(self._command)
                request = None if elements is None else store_request(context_id, elements, self._contexts)
                if request is None:
                    return actions + self._give_back(self._from(pdu, items, start))
                self._held.clear()
                self._command.clear()
                start = None
                self._begin(request)
        if start is not None or self._held:  # a command continues in the next PDU
            self._held.append(self._from(pdu, items, start))
        return actions

    @staticmethod
    def _from(pdu, items, start: int | None):
        """``pdu`` from item ``start`` on (all of it when ``start`` is None or 0)."""
        return pdu if not start else p_data_tf(items[start:])

    def _give_back(self, pdu: bytes | bytearray) -> list[Pass | Send | Abort]:
        """Hand the held PDUs and ``pdu`` to pynetdicom, which then owns that message."""
        held, self._held = self._held + [pdu], []
        self._command.clear()
        return [Pass(item) for item in held]

    def _abort(self, reason: str) -> list[Pass | Send | Abort]:
        self._aborted = True
        self._discard()
        self._held = []
        self._command.clear()
        return [Abort(reason)]

    def _begin(self, request: StoreRequest) -> None:
        self._request = request
        self._data = bytearray(file_meta(request.sop_class_uid, request.sop_instance_uid,
                                         request.transfer_syntax_uid))
        self._digest = hashlib.sha256(self._data)
        self._received = 0

    def _gather(self, fragment: memoryview) -> bool:
        self._received += len(fragment)
        if self._received > self._max_bytes:
            return False
        self._digest.update(fragment)
        if self._spill is None and len(self._data) + len(fragment) > SPILL_BYTES:
            descriptor, name = tempfile.mkstemp(suffix=".dcm")  # the node's spool folder
            spool = os.fdopen(descriptor, "wb")
            self._spill = (spool, Path(name))
            spool.write(self._data)
            self._data = None
        if self._spill is not None:
            self._spill[0].write(fragment)
        else:
            self._data += fragment
        return True

    def _answer(self) -> bytes:
        request = self._request
        if self._spill is not None:
            spool, path = self._spill
            spool.close()
            raw = path.read_bytes()
        else:
            raw = bytes(self._data)  # the store's bytes: a copy of a single frame costs ~40 µs
        sha256 = self._digest.hexdigest()
        self._discard()
        status = self._store(request, raw, sha256)
        self.stored += 1
        return store_response(request, status)

    def _discard(self) -> None:
        self._request, self._data, self._digest = None, None, None
        if self._spill is not None:
            spool, path = self._spill
            self._spill = None
            spool.close()
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """The association ended: drop what was half received, and tell the store's owner if
        this lane stored anything (in this thread)."""
        self._discard()
        self._held = []
        if self.stored and self._on_close is not None:
            self._on_close()
