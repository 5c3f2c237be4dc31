"""Who may do what over DICOM: AE title, host, and — with client certificates — the certificate."""

import pytest

from sonoloop.web.archive.services import peer_add, peer_permissions

pytestmark = pytest.mark.django_db


def _peer(**kwargs):
    return peer_add("MODALITY1", "10.0.0.21", 104, may_store=True, may_query=True, is_move_destination=False,
                    **kwargs)


def test_a_verified_certificate_must_name_the_peer_it_speaks_for():
    _peer()
    assert peer_permissions("MODALITY1", "10.0.0.21", frozenset({"MODALITY1"})).store
    assert peer_permissions("MODALITY1", "10.0.0.21", frozenset({"10.0.0.21", "us-1.cardio"})).query
    # another device's certificate from the same CA: nothing, not even C-ECHO
    other = peer_permissions("MODALITY1", "10.0.0.21", frozenset({"ARCHIVE2", "10.0.0.99"}))
    assert not (other.echo or other.store or other.query)
    # no client certificates on this node (plain DICOM or TLS without a CA): AE title and host as before
    assert peer_permissions("MODALITY1", "10.0.0.21", None).query


def test_a_peer_with_a_tls_identity_needs_exactly_that_name():
    _peer(tls_identity="us-1.cardio.example")
    assert peer_permissions("MODALITY1", "10.0.0.21", frozenset({"us-1.cardio.example"})).store
    assert not peer_permissions("MODALITY1", "10.0.0.21", frozenset({"MODALITY1", "10.0.0.21"})).store


def test_unknown_aes_with_a_certificate_keep_the_rules_for_unknown_aes(settings):
    assert peer_permissions("NOBODY", "10.0.0.5", frozenset({"NOBODY"})).echo
    assert not peer_permissions("NOBODY", "10.0.0.5", frozenset({"NOBODY"})).query
