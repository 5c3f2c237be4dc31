"""The domain core (dicom/, ml/, echo/) never imports Django or the web layer."""

import ast
from pathlib import Path

import sonoloop

CORE = ("dicom", "ml", "echo")
FORBIDDEN = ("django", "sonoloop.web")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_domain_core_does_not_import_django():
    root = Path(sonoloop.__file__).parent
    checked = 0
    offenders = []
    for package in CORE:
        for path in (root / package).rglob("*.py") if (root / package).exists() else []:
            checked += 1
            for name in _imports(path):
                if name == "django" or name.startswith(FORBIDDEN):
                    offenders.append(f"{path.relative_to(root)} imports {name}")
    assert checked > 0
    assert offenders == []


def test_config_module_stays_importable_without_django_settings():
    source = (Path(sonoloop.__file__).parent / "config.py").read_text()
    assert "django" not in source


def test_the_access_trail_sits_below_the_apps_that_write_to_it():
    """archive, annotations and accounts record events in audit; audit knows none of them."""
    root = Path(sonoloop.__file__).parent / "web" / "audit"
    allowed = ("sonoloop.web.audit", "sonoloop.web.accounts")
    offenders = [f"{path.name} imports {name}" for path in root.rglob("*.py") for name in _imports(path)
                 if name.startswith("sonoloop.web") and not name.startswith(allowed)]
    assert list(root.rglob("*.py")) and offenders == []


def test_only_the_dicomnode_command_imports_the_dicom_node():
    """The web layer talks to the node through dicom/archive.py's values; only the command
    that runs the node (and applies its pynetdicom tuning) imports it."""
    root = Path(sonoloop.__file__).parent
    importers = sorted(str(path.relative_to(root)) for path in (root / "web").rglob("*.py")
                       if any(name == "sonoloop.dicom.node" for name in _imports(path)))
    assert importers == ["web/archive/management/commands/dicomnode.py"]


def _web_imports(app: str):
    root = Path(sonoloop.__file__).parent / "web" / app
    files = list(root.rglob("*.py"))
    assert files
    return [(path.relative_to(root.parent), name) for path in files for name in _imports(path)
            if name.startswith("sonoloop.web")]


def test_the_model_registry_sits_below_analysis_and_learning():
    """Analysis asks the registry for the active model by a plain import; the registry knows
    neither analysis nor the learning loop nor annotations (learning adds its scores through a signal)."""
    allowed = ("sonoloop.web.registry", "sonoloop.web.accounts", "sonoloop.web.errors")
    offenders = [f"{path} imports {name}" for path, name in _web_imports("registry")
                 if name != "sonoloop.web" and not name.startswith(allowed)]
    assert offenders == []
    upward = [f"{path} imports {name}" for path, name in _web_imports("analysis")
              if name.startswith(("sonoloop.web.learning", "sonoloop.web.annotations"))]
    assert upward == []


def test_the_web_server_the_dicom_node_and_the_cli_start_without_torch(tmp_path):
    """torch and MONAI take seconds and hundreds of MB to import; only the task workers (and
    commands that train or predict) need them. Every `sonoloop manage` command, every web
    worker and the DICOM node importing them cost ~2.5 s of CPU per process start."""
    import os
    import subprocess
    import sys

    probe = (
        "import django, sys\n"
        "django.setup()\n"
        "from django.urls import get_resolver\n"
        "get_resolver().url_patterns\n"
        "from sonoloop.web.archive.management.commands import dicomnode\n"
        "from sonoloop.web.analysis.management.commands import worker\n"
        "from sonoloop.web.learning.management.commands import retrain\n"
        "import sonoloop.cli, sonoloop.supervisor\n"
        "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOLOOP_")}
    env.update(DJANGO_SETTINGS_MODULE="sonoloop.web.settings", SONOLOOP_DATA_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
