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


def test_a_cine_sized_file_is_written_directly_and_reads_back_exactly(tmp_path, monkeypatch):
    from sonoloop.dicom import filestore

    store = FileStore(tmp_path / "objects", tmp_path / "tmp")
    taken = []
    real = filestore._write_direct
    monkeypatch.setattr(filestore, "_write_direct", lambda fd, data: taken.append(real(fd, data)) or taken[-1])
    for size in (filestore.DIRECT_MIN_BYTES, 3_000_001, 70 << 20):  # aligned, not aligned, over the kept buffer
        data = os.urandom(size)
        key = store.put(data)
        assert store.read(key) == data and store.path(key).stat().st_size == size
    small = store.put(b"x" * 1000)  # small files stay buffered
    assert store.read(small) == b"x" * 1000
    assert len(taken) == 3, taken
    if not taken[0]:
        pytest.skip("this filesystem refuses O_DIRECT: the buffered path was used (checked below)")
    assert all(taken)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_when_a_direct_write_is_refused_the_bytes_are_written_buffered(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "objects", tmp_path / "tmp")
    real_write, calls = os.write, []

    def refuses_direct(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(22, "Invalid argument")  # what a filesystem without O_DIRECT says
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refuses_direct)
    data = os.urandom(2_500_000)
    key = store.put(data)
    assert store.read(key) == data and len(calls) >= 2
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_full_disk_during_a_direct_write_is_storage_full_and_leaves_nothing(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "objects", tmp_path / "tmp")

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageFull):
        store.put(os.urandom(2_000_000))
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "objects").rglob("*.dcm")) == []
