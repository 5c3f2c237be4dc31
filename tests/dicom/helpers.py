from io import BytesIO
from pathlib import Path

from pydicom import dcmread


def file_bytes(path: Path, **changes) -> bytes:
    """The file as a DICOM byte stream, with attributes changed or (value None) deleted."""
    ds = dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()
