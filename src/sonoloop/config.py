"""Sonoloop's settings, read from the environment in one place and checked at start-up.

Every knob is an environment variable (the `sonoloop serve` flags set the same
variables).  With none set Sonoloop uses SQLite and files under ``./sonoloop-data``.
This module imports neither Django nor pynetdicom so the CLI can check a
configuration before starting anything.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DATA_DIR = "sonoloop-data"
DUPLICATE_POLICIES = ("replace", "keep")


class ConfigError(ValueError):
    """A setting is wrong; the message says which and what to do."""


def _env_int(env: dict, name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _env_float(env: dict, name: str, default: float, minimum: float, maximum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be from {minimum} to {maximum}, got {value}")
    return value


def _env_bool(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _env_str(env: dict, name: str, default: str = "") -> str:
    return env.get(name, "").strip() or default


def _inference_engine(name: str) -> str:
    from sonoloop.ml.spec import ENGINES

    if name not in ENGINES:
        raise ConfigError(f"SONOLOOP_INFERENCE_ENGINE must be one of {', '.join(ENGINES)}, got {name!r}")
    return name


def check_ae_title(title: str, what: str = "AE title") -> str:
    """Return ``title`` if it is a valid DICOM AE title, else raise ConfigError."""
    if not title or not title.strip():
        raise ConfigError(f"{what} must not be empty")
    if len(title) > 16:
        raise ConfigError(f"{what} {title!r} is {len(title)} characters long; DICOM allows at most 16")
    if "\\" in title or any(not (0x20 <= ord(c) < 0x7F) for c in title):
        raise ConfigError(f"{what} {title!r} may only contain printable ASCII characters and no backslash")
    return title.strip()


@dataclass(frozen=True)
class Config:
    data_dir: Path
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    ae_title: str = "SONOLOOP"
    database_url: str = ""
    debug: bool = False
    allowed_hosts: tuple[str, ...] = ("*",)
    strict_peers: bool = False
    open_store: bool = False  # unknown calling AEs may store (a zero-config node on a trusted network)
    max_associations: int = 16
    max_associations_per_host: int = 8
    acse_timeout: int = 30
    dimse_timeout: int = 60
    network_timeout: int = 120
    max_pdu: int = 0  # 0 = unlimited, what most archives accept
    max_instance_mb: int = 2048
    max_decoded_mb: int = 4096  # an image whose pixels decode to more is refused (decompression bombs)
    storage_quota_mb: int = 0  # stored instances may not exceed this in all (0: no quota)
    min_free_mb: int = 256  # an instance that would leave less free disk than this is refused
    duplicate_policy: str = "replace"
    sqlite_synchronous: str = "FULL"  # or NORMAL: faster commits, the last ones lost on a power cut
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    public_url: str = ""  # the address people and viewers use, e.g. https://echo.hospital.example
    https_cert: str = ""  # gunicorn serves HTTPS itself with these (else a TLS proxy in front)
    https_key: str = ""
    web_workers: int = 2
    task_workers: int = 1  # segmentation and everything else but training
    training_workers: int = 1  # retraining runs only, so a long run never holds up arriving echoes
    preview_cache_mb: int = 512  # PNG previews of frames kept on disk, least recently made go first
    auto_analysis: bool = True  # segment and measure every stored echo
    model: str = "default"  # the model version that segments arriving echoes: a folder or "default"
    inference_engine: str = "auto"
    job_stale_seconds: int = 300  # a running job silent this long lost its worker and is re-queued
    camus_dir: str = ""  # the original training data (CAMUS frames or release) for retraining and the held-out set
    promotion_margin: float = 0.01  # a candidate may lose at most this much held-out Dice per structure
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        data_dir = Path(_env_str(env, "SONOLOOP_DATA_DIR", DEFAULT_DATA_DIR)).expanduser().absolute()
        policy = _env_str(env, "SONOLOOP_DUPLICATE_POLICY", "replace").lower()
        if policy not in DUPLICATE_POLICIES:
            raise ConfigError(f"SONOLOOP_DUPLICATE_POLICY must be one of {', '.join(DUPLICATE_POLICIES)}, got {policy!r}")
        synchronous = _env_str(env, "SONOLOOP_SQLITE_SYNCHRONOUS", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"SONOLOOP_SQLITE_SYNCHRONOUS must be FULL or NORMAL, got {synchronous!r}")
        public_url = _env_str(env, "SONOLOOP_PUBLIC_URL").rstrip("/")
        if public_url and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", public_url):
            raise ConfigError(f"SONOLOOP_PUBLIC_URL must be a scheme and a host, like https://echo.hospital.example "
                              f"(no path), got {public_url!r}")
        public_host = urlsplit(public_url).hostname if public_url else ""
        default_hosts = f"{public_host},localhost,127.0.0.1" if public_host else "*"
        hosts = tuple(h.strip() for h in _env_str(env, "SONOLOOP_ALLOWED_HOSTS", default_hosts).split(",")
                      if h.strip())
        config = cls(
            data_dir=data_dir,
            http_host=_env_str(env, "SONOLOOP_HTTP_HOST", "0.0.0.0"),
            http_port=_env_int(env, "SONOLOOP_HTTP_PORT", 8000, 1),
            dicom_host=_env_str(env, "SONOLOOP_DICOM_HOST", "0.0.0.0"),
            dicom_port=_env_int(env, "SONOLOOP_DICOM_PORT", 11112, 1),
            ae_title=check_ae_title(_env_str(env, "SONOLOOP_AE_TITLE", "SONOLOOP"), "SONOLOOP_AE_TITLE"),
            database_url=_env_str(env, "DATABASE_URL", f"sqlite:///{data_dir / 'sonoloop.sqlite3'}"),
            debug=_env_bool(env, "SONOLOOP_DEBUG", False),
            allowed_hosts=hosts or ("*",),
            strict_peers=_env_bool(env, "SONOLOOP_DICOM_STRICT", False),
            open_store=_env_bool(env, "SONOLOOP_DICOM_OPEN_STORE", False),
            max_associations=_env_int(env, "SONOLOOP_DICOM_MAX_ASSOCIATIONS", 16, 1),
            max_associations_per_host=_env_int(env, "SONOLOOP_DICOM_MAX_ASSOCIATIONS_PER_HOST", 8, 1),
            acse_timeout=_env_int(env, "SONOLOOP_DICOM_ACSE_TIMEOUT", 30, 1),
            dimse_timeout=_env_int(env, "SONOLOOP_DICOM_DIMSE_TIMEOUT", 60, 1),
            network_timeout=_env_int(env, "SONOLOOP_DICOM_NETWORK_TIMEOUT", 120, 1),
            max_pdu=_env_int(env, "SONOLOOP_DICOM_MAX_PDU", 0, 0),
            max_instance_mb=_env_int(env, "SONOLOOP_MAX_INSTANCE_MB", 2048, 1),
            max_decoded_mb=_env_int(env, "SONOLOOP_MAX_DECODED_MB", 4096, 1),
            storage_quota_mb=_env_int(env, "SONOLOOP_STORAGE_QUOTA_MB", 0, 0),
            min_free_mb=_env_int(env, "SONOLOOP_MIN_FREE_MB", 256, 0),
            duplicate_policy=policy,
            sqlite_synchronous=synchronous,
            tls_cert=_env_str(env, "SONOLOOP_DICOM_TLS_CERT"),
            tls_key=_env_str(env, "SONOLOOP_DICOM_TLS_KEY"),
            tls_ca=_env_str(env, "SONOLOOP_DICOM_TLS_CA"),
            public_url=public_url,
            https_cert=_env_str(env, "SONOLOOP_HTTPS_CERT"),
            https_key=_env_str(env, "SONOLOOP_HTTPS_KEY"),
            web_workers=_env_int(env, "SONOLOOP_WEB_WORKERS", 2, 1),
            task_workers=_env_int(env, "SONOLOOP_TASK_WORKERS", 1, 0),
            training_workers=_env_int(env, "SONOLOOP_TRAINING_WORKERS", 1, 0),
            preview_cache_mb=_env_int(env, "SONOLOOP_PREVIEW_CACHE_MB", 512, 1),
            auto_analysis=_env_bool(env, "SONOLOOP_AUTO_ANALYSIS", True),
            model=_env_str(env, "SONOLOOP_MODEL", "default"),
            inference_engine=_inference_engine(_env_str(env, "SONOLOOP_INFERENCE_ENGINE", "auto")),
            job_stale_seconds=_env_int(env, "SONOLOOP_JOB_STALE_SECONDS", 300, 10),
            camus_dir=_env_str(env, "SONOLOOP_CAMUS_DIR", ""),
            promotion_margin=_env_float(env, "SONOLOOP_PROMOTION_MARGIN", 0.01, 0.0, 1.0),
        )
        if bool(config.https_cert) != bool(config.https_key):
            raise ConfigError("SONOLOOP_HTTPS_CERT and SONOLOOP_HTTPS_KEY must be set together")
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ConfigError("SONOLOOP_DICOM_TLS_CERT and SONOLOOP_DICOM_TLS_KEY must be set together")
        return config

    @property
    def https(self) -> bool:
        """People reach the site over HTTPS: secure cookies, HSTS, redirects from HTTP."""
        return self.public_url.startswith("https://") or bool(self.https_cert)

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def static_root(self) -> Path:
        return self.data_dir / "static"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def secret_key(self) -> str:
        """The Django secret key: SONOLOOP_SECRET_KEY, else one generated once and kept in the data dir."""
        from_env = os.environ.get("SONOLOOP_SECRET_KEY", "").strip()
        if from_env:
            return from_env
        path = self.data_dir / "secret_key"
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            key = ""
        if key:
            return key
        make_private_dir(self.data_dir)
        write_private_file(path, secrets.token_urlsafe(50))
        return path.read_text().strip()


def make_private_dir(path: Path) -> None:
    """Create a folder (and its missing parents) readable by this user only: it holds patient data."""
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass


def write_private_file(path: Path, text: str) -> None:
    """Write a start-up file (0600) atomically: a temporary file, fsync, rename, folder fsync.
    A crash leaves the old file or the new one, never an empty one; of two processes racing to
    create it, the first rename wins and both read the same text back."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists() and path.read_text().strip():
            temp.unlink()  # another process won
            return
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_data_dir(config: Config) -> list[str]:
    problems = []
    for folder in (config.data_dir, config.objects_dir, config.tmp_dir):
        try:
            make_private_dir(folder)
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            problems.append(
                f"The data folder {folder} is not writable ({exc.strerror}). "
                f"Set SONOLOOP_DATA_DIR to a folder this user can write to."
            )
            break
    return problems


def check_port_free(host: str, port: int, what: str, variable: str) -> list[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return [
                f"The {what} port {port} on {host} cannot be used ({exc.strerror}): another program "
                f"is probably listening there. Stop it or choose another port with {variable}."
            ]
    return []


def check_startup(config: Config) -> list[str]:
    """Everything that must hold before `sonoloop serve` starts; a list of messages for people."""
    problems = check_data_dir(config)
    if config.http_port == config.dicom_port and config.http_host == config.dicom_host:
        problems.append("SONOLOOP_HTTP_PORT and SONOLOOP_DICOM_PORT must differ")
    else:
        problems += check_port_free(config.http_host, config.http_port, "web", "SONOLOOP_HTTP_PORT")
        problems += check_port_free(config.dicom_host, config.dicom_port, "DICOM", "SONOLOOP_DICOM_PORT")
    for variable in ("tls_cert", "tls_key", "tls_ca", "https_cert", "https_key"):
        path = getattr(config, variable)
        name = f"SONOLOOP_{variable.upper()}" if variable.startswith("https") else f"SONOLOOP_DICOM_{variable.upper()}"
        if path and not Path(path).is_file():
            problems.append(f"{name} points to {path}, which is not a readable file")
    return problems
