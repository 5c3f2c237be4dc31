"""TLS for DICOM (PS3.15 B.9, the TLS secure transport connection profile): the node's server
context, the client context it uses towards peers marked for TLS, and the names a verified
client certificate carries (to bind it to the peer that claims an AE title)."""

from __future__ import annotations

import ssl


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """The node's own: with ``ca``, a client certificate signed by it is required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cert: str = "", key: str = "", ca: str = "") -> ssl.SSLContext:
    """Towards a peer: its certificate is verified against ``ca`` (else the system's CAs) and
    must name the host connected to; the node's own certificate goes along when it has one
    (peers that require client certificates)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def certificate_names(sock) -> frozenset[str] | None:
    """The subject common names and subject alternative names (DNS, IP address, URI) of the
    verified certificate the other side presented; None on a plain connection or when no
    certificate was asked for or verified."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):  # the handshake has not run (yet)
        return None
    if not cert:
        return None
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address", "URI")}
    return frozenset(names)
