"""Under load, nothing lost: concurrent stores and readers, then SIGKILL of everything, then restart.

    .venv/bin/python benchmarks/load.py [--associations 8] [--singles 30] [--cines 1] [--readers 3]

Loopback only and bounded (fixed counts, timeouts). Starts `sonoloop serve` (SQLite, every
stored echo gets its analysis job and task row; no worker runs the model meanwhile) and:

1. **Load.** ``--associations`` pynetdicom associations at once, each sending ``--singles``
   single-frame ultrasound images (uncompressed and RLE, alternating) and ``--cines``
   120-frame JPEG cines, while ``--readers`` HTTP readers repeat QIDO-RS searches and WADO-RS
   metadata and frame requests. Prints files/s, MB/s, C-STORE latency p50/p99 per kind and the
   readers' p50/p99.
2. **Kill.** The same load with new UIDs; once half the instances are acknowledged, every
   process of the server gets SIGKILL; the server is started again on the same data folder.
   Every acknowledged instance must be indexed and its stored dataset byte-identical to
   what was sent. Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE, _config, build_context

from sonoloop.dicom.reactor import keep_responses
from sonoloop.dicom.samples import ECHO_CINE_JPEG, US_NATIVE, US_RLE_PALETTE, sample_path, write_copies

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_for_port  # noqa: E402

PASSWORD = "load-test"


def dataset_bytes(raw: bytes) -> bytes:
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return raw[fp.tell():]


def start(data_dir: Path, ports: tuple[int, int] | None = None) -> tuple[subprocess.Popen, int, int]:
    dicom_port, http_port = ports or (free_port(), free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOLOOP_") and k != "DATABASE_URL"}
    env.update(SONOLOOP_DATA_DIR=str(data_dir), SONOLOOP_DICOM_HOST="127.0.0.1", SONOLOOP_HTTP_HOST="127.0.0.1",
               SONOLOOP_DICOM_PORT=str(dicom_port), SONOLOOP_HTTP_PORT=str(http_port),
               SONOLOOP_ADMIN_PASSWORD=PASSWORD, SONOLOOP_TASK_WORKERS="0", SONOLOOP_TRAINING_WORKERS="0",
               SONOLOOP_DICOM_OPEN_STORE="1")
    sonoloop = str(Path(sys.executable).with_name("sonoloop"))
    log = (data_dir.parent / "serve.log").open("a")
    process = subprocess.Popen([sonoloop, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_for_port(dicom_port, 120)
    wait_for_port(http_port, 120)
    return process, dicom_port, http_port


def batches(work: Path, associations: int, singles: int, cines: int, tag: str) -> list[list[Path]]:
    out = []
    for n in range(associations):
        folder = work / f"{tag}-{n}"
        files = []
        for k, name in enumerate((US_NATIVE, US_RLE_PALETTE)):
            files += write_copies(sample_path(name), folder, (singles + 1 - k) // 2, per_study=10,
                                  prefix=f"s{k}-", patient_id=f"{tag.upper()}{n}-{k}-")
        files += write_copies(sample_path(ECHO_CINE_JPEG), folder, cines, prefix="cine-", patient_id=f"{tag.upper()}C{n}-")
        out.append(sorted(files, key=lambda p: p.name))
    return out


class Sender(threading.Thread):
    def __init__(self, port: int, files: list[Path], name: str):
        super().__init__(daemon=True)
        self.port, self.files, self.ae_title = port, files, name
        self.latencies: dict[str, list[float]] = {"single": [], "cine": []}
        self.acknowledged: list[Path] = []
        self.errors: list[str] = []
        self.bytes = 0

    def run(self) -> None:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        from pydicom import dcmread

        contexts = {}
        for path in self.files:
            meta = dcmread(path, stop_before_pixels=True).file_meta
            contexts[(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)] = None
        assoc = ae.associate("127.0.0.1", self.port, contexts=[build_context(*c) for c in contexts],
                             ae_title="SONOLOOP")
        if not assoc.is_established:
            self.errors.append("association not established")
            return
        keep_responses(assoc)  # many stores on one association (see sonoloop.dicom.reactor)
        try:
            for path in self.files:
                started = time.perf_counter()
                answer = assoc.send_c_store(path)
                elapsed = time.perf_counter() - started
                status = answer.get("Status") if answer else None
                if status != 0x0000:
                    self.errors.append(f"{path.name}: status {status}")
                    if not assoc.is_established:
                        return
                    continue
                self.acknowledged.append(path)
                self.bytes += path.stat().st_size
                self.latencies["cine" if path.name.startswith("cine") else "single"].append(elapsed)
        finally:
            if assoc.is_established:
                assoc.release()


class Reader(threading.Thread):
    def __init__(self, url: str, kind: str):
        super().__init__(daemon=True)
        self.url, self.kind = url, kind
        self.latencies: list[float] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        session.auth = ("admin", PASSWORD)
        known: list[dict] = []
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                if self.kind == "qido" or not known:
                    response = session.get(f"{self.url}/dicomweb/instances", params={"limit": 100}, timeout=60)
                    known = response.json() if response.status_code == 200 else []
                else:
                    item = known[len(self.latencies) % len(known)]
                    study, series, sop = (item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
                    base = f"{self.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"
                    response = session.get(f"{base}/frames/1" if self.kind == "wado-frames" else f"{base}/metadata",
                                           timeout=60)
                ok = response.status_code == 200
            except (requests.RequestException, ValueError):
                ok = False
            if ok:
                self.latencies.append(time.perf_counter() - started)
            else:
                self.errors += 1
                time.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def measure(work: Path, args) -> int:
    data_dir = work / "measure" / "data"
    data_dir.parent.mkdir(parents=True)
    process, dicom_port, http_port = start(data_dir)
    try:
        senders = [Sender(dicom_port, files, f"LOAD{n}")
                   for n, files in enumerate(batches(work, args.associations, args.singles, args.cines, "m"))]
        kinds = ["qido", "wado-metadata", "wado-frames"]
        readers = [Reader(f"http://127.0.0.1:{http_port}", kinds[n % 3]) for n in range(args.readers)]
        for reader in readers:
            reader.start()
        started = time.perf_counter()
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=args.timeout)
        elapsed = time.perf_counter() - started
        for reader in readers:
            reader.stop.set()
            reader.join(timeout=60)
        files = sum(len(s.acknowledged) for s in senders)
        megabytes = sum(s.bytes for s in senders) / 1e6
        errors = [e for s in senders for e in s.errors]
        print(f"load: {args.associations} associations at once, {files} instances ({megabytes:.0f} MB) in "
              f"{elapsed:.1f} s: {files / elapsed:.1f} files/s, {megabytes / elapsed:.1f} MB/s; errors: {len(errors)}")
        for kind in ("single", "cine"):
            values = [v for s in senders for v in s.latencies[kind]]
            print(f"  C-STORE {kind:6s} latency p50 {_pct(values, .5):7.1f} ms  p99 {_pct(values, .99):7.1f} ms "
                  f"({len(values)} stores)")
        for reader in readers:
            print(f"  reader {reader.kind:13s} p50 {_pct(reader.latencies, .5):7.1f} ms  "
                  f"p99 {_pct(reader.latencies, .99):7.1f} ms ({len(reader.latencies)} requests, "
                  f"{reader.errors} failed)")
        return 1 if errors else 0
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(120)


def _wait_closed(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                time.sleep(0.05)
        except OSError:
            return


def kill_and_restart(work: Path, args) -> int:
    data_dir = work / "kill" / "data"
    data_dir.parent.mkdir(parents=True)
    process, dicom_port, http_port = start(data_dir)
    batch = batches(work, args.associations, args.singles, args.cines, "k")
    total = sum(len(files) for files in batch)
    senders = [Sender(dicom_port, files, f"LOAD{n}") for n, files in enumerate(batch)]
    readers = [Reader(f"http://127.0.0.1:{http_port}", "qido") for _ in range(max(1, args.readers // 3))]
    for thread in (*readers, *senders):
        thread.start()
    deadline = time.monotonic() + args.timeout
    while sum(len(s.acknowledged) for s in senders) < total // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # SIGKILL to every process of the server's session at once (the children have process
    # groups of their own): a power cut, for the processes
    subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)
    process.wait(60)
    for port in (dicom_port, http_port):
        _wait_closed(port)
    for thread in (*senders, *readers):
        if isinstance(thread, Reader):
            thread.stop.set()
        thread.join(timeout=60)
    acknowledged = [p for s in senders for p in s.acknowledged]  # acknowledged before the kill took effect
    process, _, _ = start(data_dir, (dicom_port, http_port))
    try:
        db = sqlite3.connect(data_dir / "sonoloop.sqlite3")
        keys = dict(db.execute("SELECT sop_instance_uid, file_key FROM archive_instance"))
        db.close()
        from pydicom import dcmread

        lost, different = [], []
        for path in acknowledged:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            key = keys.get(uid)
            if key is None:
                lost.append(path.name)
                continue
            stored = (data_dir / "objects" / key[:2] / f"{key}.dcm").read_bytes()
            if dataset_bytes(stored) != dataset_bytes(path.read_bytes()):
                different.append(path.name)
        leftovers = [p.name for p in (data_dir / "tmp").rglob("*") if p.is_file()]
        print(f"kill: SIGKILL after {len(acknowledged)} of {total} instances acknowledged "
              f"({args.associations} associations); after the restart: {len(acknowledged) - len(lost)} indexed, "
              f"{len(lost)} lost, {len(different)} not byte-identical, {len(keys)} indexed in all, "
              f"{len(leftovers)} temporary files left")
        return 1 if lost or different or len(acknowledged) == 0 else 0
    finally:
        _stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--singles", type=int, default=30, help="single-frame images per association")
    parser.add_argument("--cines", type=int, default=1, help="120-frame cines per association")
    parser.add_argument("--readers", type=int, default=3, help="HTTP readers (QIDO, WADO metadata, WADO frames)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a phase gives up")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data) for a look")
    args = parser.parse_args(argv)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send each file's dataset bytes as they are
    work = Path(tempfile.mkdtemp(prefix="sonoloop-load-"))
    try:
        return measure(work, args) | kill_and_restart(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
