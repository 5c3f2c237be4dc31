"""A viewer loading a cine over WADO-RS, as stock OHIF v3 does it: one request per frame, six at a time
(a browser's connections per host), with OHIF's ``Accept: multipart/related;
type=application/octet-stream; transfer-syntax=*`` — against the same requests asking for
decoded frames (no transfer syntax, PS3.18's default), in the same run.

    .venv/bin/python benchmarks/viewer_frames.py [--rounds 3]

Starts `sonoloop serve` on loopback (SQLite, no task worker), stores pydicom-data's 120-frame
JPEG cine (C-STORE), then for each way prints the time to the first frame, the time to all
120 frames, and the bytes transferred against the stored file's size; then the ratios. The
target of issue 15 (OHIF: first image ≤ 1 s, whole cine ≤ 3 s, bytes within 1.5× the file) is
judged on these numbers; OHIF's own drawing time is not included (no browser runs here).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from pydicom import dcmread
from pynetdicom import AE

from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path

sys.path.insert(0, str(Path(__file__).parent))
from load import PASSWORD, _stop, start  # noqa: E402

OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DECODED_ACCEPT = "multipart/related; type=application/octet-stream"


def store(port: int, path: Path) -> None:
    ds = dcmread(path)
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="SONOLOOP")
    assert assoc.is_established, "association refused"
    try:
        answer = assoc.send_c_store(ds)
        assert answer and answer.Status == 0, f"C-STORE status {answer}"
    finally:
        assoc.release()


def load_cine(base: str, frames: int, accept: str) -> tuple[float, float, int]:
    """(seconds to the first frame, seconds to all, bytes received) for one viewer load."""
    session = requests.Session()
    session.auth = ("admin", PASSWORD)
    session.get(f"{base}/metadata", timeout=60).raise_for_status()  # the credential is verified once
    started = time.perf_counter()
    first = [None]

    def fetch(n: int) -> int:
        response = session.get(f"{base}/frames/{n}", headers={"Accept": accept}, timeout=120)
        response.raise_for_status()
        if first[0] is None:
            first[0] = time.perf_counter() - started
        return len(response.content)

    with ThreadPoolExecutor(6) as pool:
        received = sum(pool.map(fetch, range(1, frames + 1)))
    return first[0], time.perf_counter() - started, received


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sonoloop-viewer-"))
    process = None
    try:
        process, dicom_port, http_port = start(work / "data")
        path = sample_path(ECHO_CINE_JPEG)
        store(dicom_port, path)
        ds = dcmread(path, stop_before_pixels=True)
        frames = int(ds.NumberOfFrames)
        base = (f"http://127.0.0.1:{http_port}/dicomweb/studies/{ds.StudyInstanceUID}/series/"
                f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
        size = path.stat().st_size
        results = {}
        for name, accept in (("stored (OHIF's Accept)", OHIF_ACCEPT), ("decoded", DECODED_ACCEPT)):
            runs = [load_cine(base, frames, accept) for _ in range(args.rounds)]
            first, total = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            received = runs[0][2]
            results[name] = (first, total, received)
            print(f"{name:24s} first frame {first * 1000:7.0f} ms   all {frames} frames {total:6.2f} s   "
                  f"{received / 1e6:7.1f} MB ({received / size:5.2f}× the {size / 1e6:.1f} MB file)")
        (f1, t1, b1), (f2, t2, b2) = results.values()
        print(f"ratio stored/decoded: first frame {f1 / f2:.2f}, whole cine {t1 / t2:.2f}, bytes {b1 / b2:.3f}")
        ok = f1 <= 1.0 and t1 <= 3.0 and b1 <= 1.5 * size
        print(f"issue 15 targets (first ≤ 1 s, cine ≤ 3 s, bytes ≤ 1.5× file): {'met' if ok else 'NOT met'}")
        return 0
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
