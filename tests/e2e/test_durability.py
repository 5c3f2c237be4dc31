"""Kill everything with SIGKILL in the middle of a storescu batch; acknowledged instances survive."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from sonoloop.dicom.filestore import FileStore
from sonoloop.dicom.samples import US_RLE_PALETTE, sample_path, write_copies
from tests.conftest import make_server, require_tools

pytestmark = pytest.mark.e2e

BATCH = 200
KILL_AFTER = 40


def _dataset_bytes(path: Path) -> bytes:
    """The file's bytes after the File Meta Information (what the sender's dataset was)."""
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL, explicit VR, after the preamble
    return raw[144 + group_length:]


def _acknowledged(storescu_log: str) -> list[Path]:
    """Files storescu got a Success response for, from its verbose log."""
    done, current = [], None
    for line in storescu_log.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = Path(sending.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def test_sigkill_mid_batch_loses_no_acknowledged_instance(tmp_path):
    require_tools("storescu", "dcmconv")
    batch = write_copies(sample_path(US_RLE_PALETTE), tmp_path / "batch", BATCH, per_study=10)
    # Written once by dcmtk, so the files hold the encoding storescu puts on the wire
    # (it re-encodes sequence lengths); then "as received" can be checked byte for byte.
    for path in batch:
        subprocess.run(["dcmconv", str(path), str(path)], check=True)
    srv = make_server(tmp_path / "srv").start()
    log_path = tmp_path / "storescu.log"
    with log_path.open("w") as log:
        sender = subprocess.Popen(
            ["storescu", "-v", "-R", "-xr", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port), *map(str, batch)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        objects = srv.data_dir / "objects"
        while time.monotonic() < deadline and sum(1 for _ in objects.rglob("*.dcm")) < KILL_AFTER:
            time.sleep(0.01)
        srv.kill_everything()
        sender.wait(60)
    acknowledged = _acknowledged(log_path.read_text())
    assert KILL_AFTER <= len(acknowledged) < BATCH, "the kill must land in the middle of the batch"

    srv.start()  # the same data folder
    try:
        db = sqlite3.connect(srv.data_dir / "sonoloop.sqlite3")
        indexed = dict(db.execute("SELECT sop_instance_uid, file_key FROM archive_instance"))
        db.close()
        store = FileStore(srv.data_dir / "objects", srv.data_dir / "tmp")
        for source in acknowledged:
            uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
            assert uid in indexed, f"{source.name} got Success but is not in the index"
            assert _dataset_bytes(store.path(indexed[uid])) == _dataset_bytes(source), source.name
        for uid, key in indexed.items():
            stored = dcmread(store.path(key))  # every indexed file is complete
            assert stored.SOPInstanceUID == uid and len(stored.PixelData) > 0
        assert list((srv.data_dir / "tmp").glob("*.part")) == []
        # The batch can be sent again after the crash: nothing is duplicated.
        again = subprocess.run(["storescu", "-R", "-xr", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                                *map(str, batch)], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        db = sqlite3.connect(srv.data_dir / "sonoloop.sqlite3")
        assert db.execute("SELECT COUNT(*) FROM archive_instance").fetchone()[0] == BATCH
        db.close()
    finally:
        assert srv.stop() == 0


@pytest.mark.slow  # two server starts and a drain: minutes on two shared cores
def test_eight_concurrent_associations_and_readers_then_sigkill_lose_nothing_acknowledged(capsys):
    """benchmarks/load.py, small: 8 associations storing at once while QIDO and WADO readers run,
    then SIGKILL of every server process half-way and a restart: every acknowledged instance is
    indexed and byte-identical (the script exits 1 otherwise)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    import load

    assert load.main(["--associations", "8", "--singles", "4", "--cines", "0", "--readers", "3",
                      "--timeout", "300"]) == 0
    report = capsys.readouterr().out
    assert "0 lost, 0 not byte-identical" in report and "errors: 0" in report
