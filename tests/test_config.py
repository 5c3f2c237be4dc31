import socket

import pytest

from tests.conftest import free_port
from sonoloop.config import Config, ConfigError, check_ae_title, check_startup


def test_defaults_use_sqlite_under_the_data_dir(tmp_path):
    config = Config.from_env({"SONOLOOP_DATA_DIR": str(tmp_path)})
    assert config.database_url == f"sqlite:///{tmp_path / 'sonoloop.sqlite3'}"
    assert (config.http_port, config.dicom_port, config.ae_title) == (8000, 11112, "SONOLOOP")
    assert config.uses_sqlite


def test_environment_overrides_are_typed(tmp_path):
    config = Config.from_env({
        "SONOLOOP_DATA_DIR": str(tmp_path), "SONOLOOP_HTTP_PORT": "9001", "SONOLOOP_DICOM_PORT": "4242",
        "SONOLOOP_AE_TITLE": "ECHOLAB", "DATABASE_URL": "postgres://u:p@db/sonoloop", "SONOLOOP_DICOM_STRICT": "yes",
    })
    assert (config.http_port, config.dicom_port, config.ae_title) == (9001, 4242, "ECHOLAB")
    assert config.strict_peers and not config.uses_sqlite


@pytest.mark.parametrize("env, message", [
    ({"SONOLOOP_HTTP_PORT": "eighty"}, "SONOLOOP_HTTP_PORT must be a whole number"),
    ({"SONOLOOP_AE_TITLE": "A_TITLE_THAT_IS_TOO_LONG"}, "at most 16"),
    ({"SONOLOOP_AE_TITLE": "BAD\\AE"}, "no backslash"),
    ({"SONOLOOP_DICOM_STRICT": "maybe"}, "must be true or false"),
    ({"SONOLOOP_DUPLICATE_POLICY": "merge"}, "SONOLOOP_DUPLICATE_POLICY must be one of"),
    ({"SONOLOOP_DICOM_TLS_CERT": "/x.pem"}, "must be set together"),
])
def test_bad_settings_get_a_message_naming_the_variable(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env({"SONOLOOP_DATA_DIR": str(tmp_path), **env})


def test_ae_title_check_accepts_sixteen_characters():
    assert check_ae_title("ABCDEFGHIJKLMNOP") == "ABCDEFGHIJKLMNOP"


def test_startup_check_reports_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = Config.from_env({
            "SONOLOOP_DATA_DIR": str(tmp_path), "SONOLOOP_HTTP_HOST": "127.0.0.1", "SONOLOOP_HTTP_PORT": str(port),
            "SONOLOOP_DICOM_HOST": "127.0.0.1", "SONOLOOP_DICOM_PORT": str(free_port()),
        })
        problems = check_startup(config)
    assert any(f"web port {port}" in p and "SONOLOOP_HTTP_PORT" in p for p in problems)


def test_startup_check_reports_an_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = Config.from_env({"SONOLOOP_DATA_DIR": str(blocker / "data"), "SONOLOOP_HTTP_PORT": str(free_port()), "SONOLOOP_DICOM_PORT": str(free_port())})
    problems = check_startup(config)
    assert any("not writable" in p and "SONOLOOP_DATA_DIR" in p for p in problems)
