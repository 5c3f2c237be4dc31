import os
import subprocess
import time

import pytest

from sonoloop.dicom.filestore import FileStore, StorageFull


def test_put_returns_a_server_generated_key_and_the_bytes_read_back(tmp_path):
    store = FileStore(tmp_path / "objects", tmp_path / "tmp")
    key = store.put(b"DICM-bytes")
    assert len(key) == 32 and set(key) <= set("0123456789abcdef")
    assert store.read(key) == b"DICM-bytes"
    assert store.path(key).is_relative_to(tmp_path / "objects")
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad_key", ["../../etc/passwd", "1.2.840.10008", "A" * 32, ""])
def test_paths_are_never_built_from_other_strings(tmp_path, bad_key):
    store = FileStore(tmp_path / "objects", tmp_path / "tmp")
    with pytest.raises(ValueError):
        store.path(bad_key)


def test_partial_files_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    from sonoloop.dicom import filestore

    store = FileStore(tmp_path / "objects", tmp_path / "tmp")
    dead = subprocess.Popen(["true"])
    dead.wait()
    crashed = tmp_path / "tmp" / f"{filestore._WRITER}-{dead.pid}-{'a' * 32}.part"
    in_progress = tmp_path / "tmp" / f"{filestore._WRITER}-{os.getpid()}-{'b' * 32}.part"
    elsewhere = tmp_path / "tmp" / f"otherhost-{dead.pid}-{'c' * 32}.part"
    for path in (crashed, in_progress, elsewhere):
        path.write_bytes(b"half")
    assert store.clean_partials() == 1
    assert not crashed.exists() and in_progress.exists() and elsewhere.exists()
    old = time.time() - 2 * 24 * 3600
    os.utime(elsewhere, (old, old))
    assert store.clean_partials() == 1 and not elsewhere.exists()


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "objects", tmp_path / "tmp")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageFull):
        store.put(b"data")
    assert list((tmp_path / "tmp").iterdir()) == []
