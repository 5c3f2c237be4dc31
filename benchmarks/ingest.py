"""Ingest speed: the same storescu batches into Sonoloop and into Orthanc, in one run.

    .venv/bin/python benchmarks/ingest.py [--singles 300] [--cines 20] [--rounds 2]

Starts Orthanc (Debian package `orthanc`) and `sonoloop serve` on loopback ports with their
own storage folders, sends a batch of single-frame ultrasound images and a batch of
multi-frame cine loops with dcmtk's storescu (one association per batch), and prints
files/s and MB/s for both and Sonoloop's ratio to Orthanc.  Both sides fsync: Sonoloop
always does; Orthanc is configured with "SyncStorageArea": true (its default).

TCP_NODELAY=1 is set for Orthanc and storescu: dcmtk-based programs otherwise leave
Nagle's algorithm on and stall ~40 ms per C-STORE response on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path, write_copies

SINGLE_FRAME = "OBXXXX1A.dcm"  # real single-frame US, 640×480 palette colour, uncompressed (486 KB)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def start_orthanc(work: Path) -> tuple[subprocess.Popen, int, int]:
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "StorageCompression": False,
        "SyncStorageArea": True,
        "Plugins": [],
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "TCP_NODELAY": "1"}
    log = (work / "orthanc.log").open("w")
    process = subprocess.Popen(["Orthanc", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(dicom_port)
    wait_for_port(http_port)
    return process, dicom_port, http_port


def start_sonoloop(work: Path) -> tuple[subprocess.Popen, int, Path]:
    dicom_port, http_port = free_port(), free_port()
    data_dir = work / "sonoloop-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOLOOP_") and k != "DATABASE_URL"}
    env.update(SONOLOOP_DATA_DIR=str(data_dir), SONOLOOP_DICOM_HOST="127.0.0.1", SONOLOOP_HTTP_HOST="127.0.0.1",
               SONOLOOP_DICOM_PORT=str(dicom_port), SONOLOOP_HTTP_PORT=str(http_port), SONOLOOP_ADMIN_PASSWORD="bench",
               # each stored echo still gets its analysis job and task row (part of ingest), but no
               # worker runs the model meanwhile: this measures the PACS side, not inference
               SONOLOOP_TASK_WORKERS="0", SONOLOOP_TRAINING_WORKERS="0",
               SONOLOOP_DICOM_OPEN_STORE="1")
    log = (work / "sonoloop.log").open("w")
    sonoloop = str(Path(sys.executable).with_name("sonoloop"))
    process = subprocess.Popen([sonoloop, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_for_port(dicom_port)
    wait_for_port(http_port)
    return process, dicom_port, data_dir


def send(port: int, aec: str, files: list[Path], flag: str | None) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    args = ["storescu", "-R", *([flag] if flag else []), "-aec", aec, "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or "E:" in result.stderr:
        raise RuntimeError(f"storescu to {aec} failed: {result.stderr[-2000:]}")
    return elapsed


def orthanc_count(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as response:
        return int(json.load(response)["CountInstances"])


def sonoloop_count(data_dir: Path) -> int:
    import sqlite3

    db = sqlite3.connect(data_dir / "sonoloop.sqlite3")
    try:
        return db.execute("SELECT COUNT(*) FROM archive_instance").fetchone()[0]
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--cines", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4,
                        help="batches per kind and target (fresh UIDs each; the order alternates every round)")
    args = parser.parse_args()
    for tool in ("storescu", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"needs {tool}: apt-get install dcmtk orthanc", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="sonoloop-bench-"))
    orthanc, o_port, o_http = start_orthanc(work)
    sonoloop, s_port, s_data = start_sonoloop(work)
    results: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    try:
        kinds = [("single-frame", sample_path(SINGLE_FRAME), args.singles, None),
                 ("cine loops", sample_path(ECHO_CINE_JPEG), args.cines, "-xy")]
        for round_no in range(args.rounds):
            for kind, source, count, flag in kinds:
                targets = [("Orthanc", o_port, "ORTHANC"), ("Sonoloop", s_port, "SONOLOOP")]
                for target, port, aec in targets[:: 1 if round_no % 2 == 0 else -1]:
                    folder = work / f"{kind[:6]}-{target}-{round_no}"
                    files = write_copies(source, folder, count, per_study=count, prefix=target)
                    size = sum(f.stat().st_size for f in files)
                    seconds = send(port, aec, files, flag)
                    results.setdefault((kind, target), []).append((count, size, seconds))
                    shutil.rmtree(folder)
        expected = args.rounds * (args.singles + args.cines)
        stored = {"Orthanc": orthanc_count(o_http), "Sonoloop": sonoloop_count(s_data)}
    finally:
        orthanc.send_signal(signal.SIGTERM)
        sonoloop.send_signal(signal.SIGTERM)
        orthanc.wait(60)
        sonoloop.wait(60)

    print(f"batch: {args.singles} × {SINGLE_FRAME} and {args.cines} × {ECHO_CINE_JPEG} (120 frames), "
          f"{args.rounds} rounds, one storescu association per batch; both fsync every instance")
    print(f"instances stored: Orthanc {stored['Orthanc']}, Sonoloop {stored['Sonoloop']} (expected {expected} each)")
    print(f"{'kind':14} {'target':9} {'files/s':>9} {'MB/s':>8}")
    rates = {}
    for (kind, target), runs in results.items():
        files = sum(r[0] for r in runs)
        megabytes = sum(r[1] for r in runs) / 1e6
        seconds = sum(r[2] for r in runs)
        rates[(kind, target)] = (files / seconds, megabytes / seconds)
        print(f"{kind:14} {target:9} {files / seconds:9.1f} {megabytes / seconds:8.1f}")
    single = rates[("single-frame", "Sonoloop")][0] / rates[("single-frame", "Orthanc")][0]
    cine = rates[("cine loops", "Sonoloop")][1] / rates[("cine loops", "Orthanc")][1]
    print(f"ratio Sonoloop/Orthanc: single-frame files/s {single:.2f} (target ≥ 1.0), "
          f"cine MB/s {cine:.2f} (target ≥ 1.0)")
    shutil.rmtree(work, ignore_errors=True)
    ok = stored["Orthanc"] == stored["Sonoloop"] == expected
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
