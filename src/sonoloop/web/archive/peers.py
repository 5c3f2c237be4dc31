"""DICOM peers: who may store, query and correct, where C-MOVE and results may go."""

from __future__ import annotations

import logging

from django.conf import settings

from sonoloop.config import ConfigError, check_ae_title
from sonoloop.dicom.archive import Destination, Permissions

from .models import DicomPeer

log = logging.getLogger("sonoloop.archive")


class PeerError(ValueError):
    pass


def peer_add(ae_title: str, host: str, port: int, *, may_store: bool, may_query: bool,
             is_move_destination: bool, receives_results: bool = False, may_correct: bool = False,
             description: str = "", use_tls: bool = False, tls_identity: str = "") -> DicomPeer:
    try:
        ae_title = check_ae_title(ae_title, "The peer's AE title")
    except ConfigError as exc:
        raise PeerError(str(exc)) from None
    if not (1 <= int(port) <= 65535):
        raise PeerError(f"port {port} is not between 1 and 65535")
    if not host.strip():
        raise PeerError("the peer's host must not be empty")
    peer, _ = DicomPeer.objects.update_or_create(
        ae_title=ae_title,
        defaults={
            "host": host.strip(),
            "port": int(port),
            "may_store": may_store,
            "may_query": may_query,
            "is_move_destination": is_move_destination,
            "receives_results": receives_results,
            "may_correct": may_correct,
            "description": description,
            "use_tls": use_tls,
            "tls_identity": tls_identity.strip(),
        },
    )
    return peer


def peer_remove(ae_title: str) -> None:
    deleted, _ = DicomPeer.objects.filter(ae_title=ae_title.strip()).delete()
    if not deleted:
        raise PeerError(f"there is no peer with AE title {ae_title!r}")


def peer_permissions(calling_ae: str, address: str, certificate_names: frozenset[str] | None = None
                     ) -> Permissions:
    """Who may do what over DICOM (the README's "Who may talk to the node").

    An AE title is a name anyone can claim, so what exposes or changes stored data also
    needs the peer's registered host: query and retrieve, and corrections. An unknown AE may
    C-ECHO, and C-STORE only on an open node (``SONOLOOP_DICOM_OPEN_STORE``). In strict mode
    (``SONOLOOP_DICOM_STRICT``) an unknown AE may do nothing, and a known one only from its host.

    ``certificate_names``: the names in the client certificate verified on this connection
    (client certificates required: ``SONOLOOP_DICOM_TLS_CA``). Any certificate from that CA
    would otherwise do for any AE title: a known peer's certificate must carry its
    ``tls_identity``, or else its AE title or host; one that does not gets nothing.
    """
    peer = DicomPeer.objects.filter(ae_title=calling_ae.strip()).first()
    config = settings.CONFIG
    if peer is None:
        if config.strict_peers:
            return Permissions(echo=False, store=False, query=False)
        return Permissions(echo=True, store=config.open_store, query=False)
    if certificate_names is not None:
        expected = {peer.tls_identity} if peer.tls_identity else {peer.ae_title, peer.host}
        if not expected & set(certificate_names):
            log.warning("association from %s at %s: its certificate (%s) is not the one of peer %s (%s)",
                        calling_ae, address, ", ".join(sorted(certificate_names)) or "no names",
                        peer.ae_title, " or ".join(sorted(expected)))
            return Permissions(echo=False, store=False, query=False)
    at_home = _host_matches(peer.host, address)
    if config.strict_peers and not at_home:
        return Permissions(echo=False, store=False, query=False)
    return Permissions(echo=True, store=peer.may_store, query=peer.may_query and at_home,
                       correct=peer.may_correct and at_home)


def _host_matches(host: str, address: str) -> bool:
    import socket

    if host == address:
        return True
    try:
        return address in {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False


def move_destination(ae_title: str) -> Destination | None:
    peer = DicomPeer.objects.filter(ae_title=ae_title, is_move_destination=True).first()
    return Destination(peer.ae_title, peer.host, peer.port, tls=peer.use_tls) if peer else None
