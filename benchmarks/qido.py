"""QIDO-RS latency on an archive of 10,000 instances: Sonoloop beside Orthanc's own DICOMweb
plugin, the same data and the same queries, in one run.

    .venv/bin/python benchmarks/qido.py [--instances 10000] [--queries 200]

Writes small ultrasound images (16×16 pixels: the index, not the pixels, is what QIDO reads)
for 1,250 patients, 2 studies each, 2 series per study, 2 images per series (10,000 at the
default size), with realistic names, IDs and study dates spread over ten years; sends them with
dcmtk's storescu (four associations at a time) to `sonoloop serve` (SQLite) and to Orthanc
(Debian's `orthanc` with `orthanc-dicomweb`). Then one client, keep-alive, asks each server the
same randomly drawn searches one after another — study searches (patient name prefix, patient
ID, a month of study dates, modality with a limit), series of a study, instances of a series,
and an instance by SOP Instance UID across the archive — and prints p50 and p99 per level and
Sonoloop's ratio to Orthanc. Sonoloop is asked with HTTP Basic (verified once, then cached, as
for any client); Orthanc with authentication off. Issue 15's target: p50 ≤ 30 ms and p99 ≤ 100 ms
at each level, ratio ≤ 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_for_port  # noqa: E402
from load import PASSWORD, _stop, start  # noqa: E402

ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
FAMILY = ["Smith", "Müller", "García", "Rossi", "Nowak", "Jensen", "Dubois", "Silva", "Kowalski", "Novak",
          "Berg", "Visser", "Papadopoulos", "Yilmaz", "Horvath", "Costa", "Murphy", "Andersson", "Ivanov", "Khan"]
GIVEN = ["Anna", "Jan", "Maria", "Peter", "Eva", "Luca", "Sofia", "Omar", "Ida", "Noah"]


def write_archive(folder: Path, instances: int, seed: int = 7) -> dict:
    """Files in four sub-folders (one per association); returns what the queries draw from."""
    rng = random.Random(seed)
    pixels = np.zeros((16, 16), np.uint8).tobytes()
    catalogue = {"patients": [], "studies": [], "series": [], "instances": []}
    n = 0
    patient = 0
    while n < instances:
        patient += 1
        family = rng.choice(FAMILY)
        name, pid = f"{family}^{rng.choice(GIVEN)}", f"P{patient:06d}"
        sex, birth = rng.choice("MF"), f"{rng.randint(1930, 2005)}0101"
        catalogue["patients"].append((family, pid))
        for _ in range(2):
            study_uid = generate_uid()
            date = f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            accession = f"A{len(catalogue['studies']):07d}"
            catalogue["studies"].append((study_uid, date))
            for series_number in (1, 2):
                series_uid = generate_uid()
                catalogue["series"].append((study_uid, series_uid))
                for number in (1, 2):
                    ds = Dataset()
                    ds.file_meta = FileMetaDataset()
                    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
                    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = name, pid, sex, birth
                    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                    ds.StudyDate = ds.SeriesDate = date
                    ds.StudyTime, ds.AccessionNumber, ds.StudyID = "101010", accession, "1"
                    ds.StudyDescription = "Echocardiography"
                    ds.ReferringPhysicianName = "Referrer^Rita"
                    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", series_number, number
                    ds.Rows = ds.Columns = 16
                    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
                    ds.PixelData = pixels
                    ds.save_as(folder / f"part{n % 4}" / f"{n:06d}.dcm", enforce_file_format=True)
                    catalogue["instances"].append((study_uid, series_uid, ds.SOPInstanceUID))
                    n += 1
    return catalogue


def send_all(folder: Path, port: int, aec: str) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    began = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda part: subprocess.run(
            ["storescu", "-aec", aec, "+sd", "127.0.0.1", str(port), str(part)],
            env=env, capture_output=True, text=True), sorted(folder.iterdir())))
    for result in results:
        if result.returncode != 0:
            raise RuntimeError(f"storescu to {aec} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - began


def start_orthanc(work: Path) -> tuple[subprocess.Popen, int, int]:
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StorageCompression": False,
        "Plugins": [ORTHANC_DICOMWEB], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (work / "orthanc.log").open("w")
    process = subprocess.Popen(["Orthanc", str(path)], env={**os.environ, "TCP_NODELAY": "1"},
                               stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(dicom_port)
    wait_for_port(http_port)
    return process, dicom_port, http_port


def draw_queries(catalogue: dict, count: int, seed: int = 11) -> dict[str, list[tuple[str, dict]]]:
    """The same searches for both servers: (path under the DICOMweb root, parameters)."""
    rng = random.Random(seed)
    studies = []
    for i in range(count):
        family, pid = rng.choice(catalogue["patients"])
        _, date = rng.choice(catalogue["studies"])
        kind = i % 4
        if kind == 0:
            studies.append(("studies", {"PatientName": f"{family[:3]}*", "limit": "25"}))
        elif kind == 1:
            studies.append(("studies", {"PatientID": pid}))
        elif kind == 2:
            studies.append(("studies", {"StudyDate": f"{date[:6]}01-{date[:6]}28", "limit": "25"}))
        else:
            studies.append(("studies", {"ModalitiesInStudy": "US", "limit": "25", "offset": str(rng.randint(0, 2000))}))
    series = [(f"studies/{rng.choice(catalogue['studies'])[0]}/series", {}) for _ in range(count)]
    instances = []
    for i in range(count):
        study, serie, sop = rng.choice(catalogue["instances"])
        instances.append((f"studies/{study}/series/{serie}/instances", {}) if i % 2 == 0
                         else ("instances", {"SOPInstanceUID": sop}))
    return {"study": studies, "series": series, "instance": instances}


def measure(base: str, auth, queries: list[tuple[str, dict]]) -> list[tuple[str, float, int]]:
    """(kind of search, seconds, results) per query."""
    session = requests.Session()
    session.auth = auth
    session.headers["Accept"] = "application/dicom+json"
    session.get(f"{base}/studies", params={"limit": "1"}, timeout=60).raise_for_status()  # connection, credential
    out = []
    for path, params in queries:
        began = time.perf_counter()
        response = session.get(f"{base}/{path}", params=params, timeout=60)
        elapsed = time.perf_counter() - began
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{base}/{path} {params}: {response.status_code} {response.text[:300]}")
        kind = ",".join(k for k in params if k != "limit") or path.rsplit("/", 1)[-1]
        out.append((kind, elapsed, len(response.json()) if response.status_code == 200 and response.content else 0))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200, help="searches per level")
    args = parser.parse_args(argv)
    for tool, path in (("storescu", None), ("Orthanc", None), ("orthanc-dicomweb", ORTHANC_DICOMWEB)):
        if (path and not Path(path).exists()) or (not path and not shutil.which(tool)):
            print(f"needs {tool}: apt-get install dcmtk orthanc orthanc-dicomweb", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="sonoloop-qido-"))
    sonoloop = orthanc = None
    try:
        files = work / "files"
        for part in range(4):
            (files / f"part{part}").mkdir(parents=True)
        catalogue = write_archive(files, args.instances)
        print(f"{len(catalogue['instances'])} instances, {len(catalogue['studies'])} studies, "
              f"{len(catalogue['patients'])} patients written")
        sonoloop, s_dicom, s_http = start(work / "data")
        orthanc, o_dicom, o_http = start_orthanc(work)
        for name, port, aec in (("Sonoloop", s_dicom, "SONOLOOP"), ("Orthanc", o_dicom, "ORTHANC")):
            print(f"stored into {name} in {send_all(files, port, aec):.0f} s")
        queries = draw_queries(catalogue, args.queries)
        targets = {"Sonoloop": (f"http://127.0.0.1:{s_http}/dicomweb", ("admin", PASSWORD)),
                   "Orthanc": (f"http://127.0.0.1:{o_http}/dicom-web", None)}
        ok = True
        print(f"{'level':9s} {'server':9s} {'p50 ms':>7s} {'p99 ms':>7s} {'mean ms':>8s} {'results':>8s}")
        for level, searches in queries.items():
            runs = {name: measure(base, auth, searches) for name, (base, auth) in targets.items()}
            mine, theirs = runs["Sonoloop"], runs["Orthanc"]
            for name, run in runs.items():
                times = [t for _, t, _ in run]
                print(f"{level:9s} {name:9s} {percentile(times, 0.5):7.1f} {percentile(times, 0.99):7.1f} "
                      f"{statistics.mean(times) * 1000:8.1f} {sum(n for *_, n in run):8d}")
            # compared only where both answered alike: a server answering nothing does no work
            alike = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a[2] == b[2]]
            for kind in dict.fromkeys(k for k, *_ in mine):
                differ = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a[0] == kind and a[2] != b[2]]
                if differ:
                    print(f"{'':9s} {len(differ)} {kind} searches answered differently (Sonoloop "
                          f"{sum(mine[i][2] for i in differ)} results, Orthanc {sum(theirs[i][2] for i in differ)}): "
                          f"left out of the ratio")
            s50, s99 = (percentile([mine[i][1] for i in alike], q) for q in (0.5, 0.99))
            o50, o99 = (percentile([theirs[i][1] for i in alike], q) for q in (0.5, 0.99))
            print(f"{level:9s} ratio Sonoloop/Orthanc over the {len(alike)} alike: p50 {s50:.1f}/{o50:.1f} ms = "
                  f"{s50 / o50:.2f}, p99 {s99:.1f}/{o99:.1f} ms = {s99 / o99:.2f}")
            every = [t for _, t, _ in mine]
            ok &= percentile(every, 0.5) <= 30 and percentile(every, 0.99) <= 100 and s50 <= o50 and s99 <= o99
        print(f"issue 15 target (p50 ≤ 30 ms, p99 ≤ 100 ms, ratio ≤ 1.0 at every level): {'met' if ok else 'NOT met'}")
        return 0
    finally:
        if orthanc is not None:
            orthanc.send_signal(signal.SIGTERM)
            orthanc.wait(60)
        if sonoloop is not None:
            _stop(sonoloop)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
