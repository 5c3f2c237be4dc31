"""What `sonoloop serve` sets up on its own: the first admin and the worker processes."""

import dataclasses
import os

import pytest
from django.contrib.auth import get_user_model

from sonoloop.supervisor import _ensure_admin, children


def _workers(config):
    return {c.name: c.argv[c.argv.index("worker") + 1:] for c in children(config) if "worker" in c.argv}


def test_training_runs_on_its_own_worker_so_arriving_echoes_are_still_segmented(settings):
    workers = _workers(dataclasses.replace(settings.CONFIG, task_workers=2, training_workers=1))
    assert sorted(workers) == ["task worker 1", "task worker 2", "training worker 1"]
    for name in ("task worker 1", "task worker 2"):
        argv = workers[name]
        assert argv[argv.index("--queue-name") + 1] == "*"
        assert argv[argv.index("--exclude-queues") + 1] == "training"
    training = workers["training worker 1"]
    assert training[training.index("--queue-name") + 1] == "training"
    ids = [argv[argv.index("--worker-id") + 1] for argv in workers.values()]
    assert len(set(ids)) == 3
    # training elsewhere (a GPU machine): no training worker here
    assert "training worker 1" not in _workers(dataclasses.replace(settings.CONFIG, training_workers=0))


@pytest.fixture
def data_dir(settings, tmp_path, monkeypatch):
    settings.CONFIG = dataclasses.replace(settings.CONFIG, data_dir=tmp_path)
    return tmp_path


def test_a_generated_admin_password_stays_on_disk_only_until_it_is_changed(db, data_dir, monkeypatch):
    monkeypatch.delenv("SONOLOOP_ADMIN_PASSWORD", raising=False)
    from django.conf import settings

    _ensure_admin(settings.CONFIG)
    note = data_dir / "initial-admin-password"
    password = note.read_text().strip()
    assert os.stat(note).st_mode & 0o077 == 0
    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password(password)
    admin.email = "echo-lab@example.org"
    admin.save()  # other changes leave it
    assert note.exists()
    admin.set_password("a new and long passphrase")
    admin.save()
    assert not note.exists()
    admin.save()  # nothing left to remove: no error


def test_a_password_from_the_environment_is_never_written_down(db, data_dir, monkeypatch):
    monkeypatch.setenv("SONOLOOP_ADMIN_PASSWORD", "set by the installer")
    from django.conf import settings

    _ensure_admin(settings.CONFIG)
    assert get_user_model().objects.get(username="admin").check_password("set by the installer")
    assert not (data_dir / "initial-admin-password").exists()
