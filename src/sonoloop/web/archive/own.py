"""What this installation makes itself (its SEG, SR, exported annotations): their device,
their stable UIDs, and storing them through the same path as everything else."""

from django.conf import settings

from .ownership import Sender
from .store import StoreResult, instance_store


def dataset_store(dataset) -> StoreResult:
    """Store a dataset this installation made (its SEG, SR, an exported annotation): written in
    the DICOM file format, stored as from this node's own AE (trusted to replace what it made
    itself: a repeated write under the same UIDs replaces), and marked derived so it makes
    no analysis job."""
    import io

    from pydicom.filewriter import dcmwrite

    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return instance_store(out.getvalue(), sender=Sender(settings.CONFIG.ae_title, may_correct=True), derived=True)


def own_device():
    """This installation as the device that made its SEG and SR objects."""
    from sonoloop import __version__
    from sonoloop.dicom.seg import Device

    return Device("Sonoloop", "Sonoloop", settings.CONFIG.ae_title, __version__)


def own_uid(*parts: object) -> str:
    """A UID for something this installation makes, the same every time for the same ``parts``
    (e.g. the SEG of one analysis job): a repeated write replaces instead of adding a copy."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[settings.CONFIG.ae_title, str(settings.CONFIG.data_dir), *map(str, parts)])
