"""Run the DICOM node (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE) until SIGTERM."""

import logging
import signal
import socket
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from sonoloop.dicom import tuning
from sonoloop.dicom.node import DicomNode, NodeSettings, receive_into_files
from sonoloop.web.archive.dicom_archive import DjangoArchive
from sonoloop.web.archive.services import filestore

log = logging.getLogger("sonoloop.dicom")


class Command(BaseCommand):
    help = "Run the DICOM node in the foreground."

    def handle(self, *args, **options):
        config = settings.CONFIG
        removed = filestore().clean_partials()
        if removed:
            log.info("removed %d partial files left by an earlier crash", removed)
        try:  # this process only: the web and task workers run pynetdicom as it ships
            tuning.node_process()
        except tuning.TuningError as exc:
            log.error("%s; the node runs with pynetdicom's own 1 ms poll", exc)
        receive_into_files(config.tmp_dir / f"received-{socket.gethostname()}")
        node = DicomNode(
            DjangoArchive(),
            NodeSettings(
                ae_title=config.ae_title,
                host=config.dicom_host,
                port=config.dicom_port,
                max_associations=config.max_associations,
                max_associations_per_host=config.max_associations_per_host,
                acse_timeout=config.acse_timeout,
                dimse_timeout=config.dimse_timeout,
                network_timeout=config.network_timeout,
                max_pdu=config.max_pdu,
                max_instance_bytes=config.max_instance_mb * 1024 * 1024,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                tls_ca=config.tls_ca,
            ),
        )
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        node.start(block=False)
        log.info(
            "DICOM node %s listening on %s:%d%s",
            config.ae_title, config.dicom_host, config.dicom_port, " (TLS)" if config.tls_cert else "",
        )
        stop.wait()
        log.info("DICOM node stopping: letting open associations finish (up to 20 s)")
        node.drain(timeout=20)
        log.info("DICOM node stopped")
