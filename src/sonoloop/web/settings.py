"""Django settings: everything comes from :class:`sonoloop.config.Config` (the environment)."""

import dj_database_url

from sonoloop.config import Config, make_private_dir

CONFIG = Config.from_env()

DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key()
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks",
    "django_tasks_db",
    "sonoloop.web.accounts",
    "sonoloop.web.audit",
    "sonoloop.web.archive",
    "sonoloop.web.registry",
    "sonoloop.web.analysis",
    "sonoloop.web.annotations",
    "sonoloop.web.learning",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # who is logged in is known before any body is read (by the CSRF check, for forms)
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "sonoloop.web.bodies.RequestBodyLimit",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "sonoloop.web.headers.ContentSecurityPolicy",
]

ROOT_URLCONF = "sonoloop.web.urls"
WSGI_APPLICATION = "sonoloop.web.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "sonoloop.web.accounts.context_processors.roles",
            ],
        },
    },
]

# a web thread keeps its connection between requests (checked before reuse): opening one and
# running the PRAGMAs below cost 1–4 ms per DICOMweb request. The DICOM node and the worker
# close theirs themselves.
_db = dj_database_url.parse(CONFIG.database_url, conn_max_age=600, conn_health_checks=True)
if CONFIG.uses_sqlite:
    # WAL lets the web server, the DICOM node and the worker read while one writes;
    # IMMEDIATE transactions take the write lock up front instead of failing on upgrade.
    _db["OPTIONS"] = {
        # FULL: a commit (an acknowledged C-STORE's index row) survives a power cut; it costs
        # ~0.3–0.6 ms per commit here (README, "Durability").
        "init_command": f"PRAGMA journal_mode=WAL; PRAGMA synchronous={CONFIG.sqlite_synchronous}; "
                        "PRAGMA busy_timeout=30000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKS = {
    "default": {
        "BACKEND": "sonoloop.web.taskrows.DatabaseBackend",  # django-tasks-db's, its row prepared once
        "QUEUES": ["default", "inference", "training"],
    }
}
# Job rows whose worker can be lost (killed, machine gone); every worker runs these (web/jobs.py)
LOST_WORKER_CHECKS = [
    "sonoloop.web.analysis.services.jobs_requeue_stale",
    "sonoloop.web.learning.services.retraining_fail_stale",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "archive:studies"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = CONFIG.static_root
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Django's own limit for form bodies; STOW-RS and annotation saves read theirs with bodies.read_body
DATA_UPLOAD_MAX_MEMORY_SIZE = 2621440
FILE_UPLOAD_MAX_MEMORY_SIZE = 16 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = str(CONFIG.tmp_dir)  # uploads spool in the data folder, not the system's /tmp
try:
    make_private_dir(CONFIG.tmp_dir)
except OSError:
    pass  # `sonoloop serve` reports an unwritable data folder with what to do
DATA_UPLOAD_MAX_NUMBER_FILES = 1000

AUTHENTICATION_BACKENDS = ["sonoloop.web.accounts.throttle.ThrottledModelBackend"]

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = 12 * 3600  # a working day on a shared clinical workstation
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# SONOLOOP_PUBLIC_URL (README, "HTTPS"): the origin forms come from, and with https:// secure
# cookies, HSTS and redirects to HTTPS. A TLS proxy in front sets X-Forwarded-Proto (and gunicorn
# then listens on 127.0.0.1 only); with SONOLOOP_HTTPS_CERT gunicorn speaks TLS itself.
if CONFIG.public_url:
    CSRF_TRUSTED_ORIGINS = [CONFIG.public_url]
if CONFIG.https:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HSTS for every subdomain of a hospital's domain, or on the browsers' preload list, is the
# hospital's decision about its other services, not Sonoloop's: left off, and said so.
SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "pynetdicom": {"level": "WARNING"},
        # highdicom says at INFO which module it copies into every SEG and SR: ten lines a job
        "highdicom": {"level": "WARNING"},
        "django.request": {"level": "WARNING"},
    },
}
