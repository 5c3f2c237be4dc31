"""Sending stored instances to another DICOM node (C-STORE as an SCU)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from .reactor import keep_responses


class SendError(Exception):
    """The instance did not arrive; the message says what the peer or the network did."""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


def open_association(ae: AE, peer: Peer, tls_context: ssl.SSLContext | None, timeout: float, what: str,
                     ext_neg: list | None = None):
    """An established association to ``peer`` from ``ae``; SendError saying why there is none."""
    try:  # pynetdicom reports a refused connection as an aborted association; tell them apart
        socket.create_connection((peer.host, peer.port), timeout=timeout).close()
    except OSError as exc:
        raise SendError(f"cannot connect to {peer.ae_title} at {peer.host}:{peer.port}: {exc}") from None
    association = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=ext_neg,
                               tls_args=(tls_context, peer.host) if tls_context else None)
    if not association.is_established:
        if association.is_rejected:
            reason = "rejected the association (is Sonoloop's AE title known there?)"
        elif association.is_aborted:
            reason = (f"aborted the association request (it may accept no presentation context for "
                      f"{what})")
        else:
            reason = "did not answer the association request"
        if tls_context:
            reason += " (over TLS: is its certificate valid for that host and signed by the CA Sonoloop trusts?)"
        raise SendError(f"{peer.ae_title} at {peer.host}:{peer.port} {reason}")
    keep_responses(association)
    return association


def send_file(path: Path, peer: Peer, calling_ae: str, timeout: float = 30,
              tls_context: ssl.SSLContext | None = None) -> None:
    """C-STORE one DICOM file in its own transfer syntax (or Explicit VR Little Endian when the
    peer accepts only that for an uncompressed file); raises SendError unless it succeeded.
    With ``tls_context`` (``dicom.tls.client_context``) the association runs over TLS and the
    peer's certificate must be valid for its host."""
    dataset = dcmread(path)
    syntax = dataset.file_meta.TransferSyntaxUID
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    syntaxes = [syntax] if syntax.is_compressed else list(dict.fromkeys([syntax, ExplicitVRLittleEndian,
                                                                         ImplicitVRLittleEndian]))
    ae.add_requested_context(dataset.SOPClassUID, syntaxes)
    association = open_association(ae, peer, tls_context, timeout, what=dataset.SOPClassUID.name)
    try:
        if not association.accepted_contexts:
            raise SendError(f"{peer.ae_title} accepts no presentation context for {dataset.SOPClassUID.name}")
        status = association.send_c_store(dataset)
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            raise SendError(f"{peer.ae_title} gave no C-STORE response (timeout or aborted association)")
        if code not in (0x0000, 0xB000, 0xB006, 0xB007):
            raise SendError(f"{peer.ae_title} answered C-STORE with status 0x{code:04X}")
    finally:
        if association.is_established:
            association.release()
