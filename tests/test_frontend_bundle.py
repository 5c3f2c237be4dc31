"""The viewer bundle is committed (so `scripts/start` needs no Node); it must be what the sources build."""

import filecmp
import os
import subprocess
from pathlib import Path

from tests.conftest import require_tools

ROOT = Path(__file__).resolve().parents[1]
FRONTEND = ROOT / "frontend"
BUNDLE = ROOT / "src" / "sonoloop" / "web" / "annotations" / "static" / "annotations" / "viewer"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_the_committed_viewer_bundle_is_built_from_the_sources(tmp_path):
    require_tools("node", "npm")
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false"}
    lock = FRONTEND / "package-lock.json"
    installed = FRONTEND / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=FRONTEND, env=env, check=True,
                       capture_output=True, timeout=600)
    out = tmp_path / "viewer"
    build = subprocess.run(["npx", "--no-install", "vite", "build", "--outDir", str(out), "--emptyOutDir"],
                           cwd=FRONTEND, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    built, committed = _files(out), _files(BUNDLE)
    assert built == committed, f"run `npm run build` in frontend/ and commit: only built {sorted(built - committed)}, " \
                               f"only committed {sorted(committed - built)}"
    stale = [name for name in sorted(built) if not filecmp.cmp(out / name, BUNDLE / name, shallow=False)]
    assert not stale, f"the committed bundle is older than the sources ({stale}): run `npm run build` in frontend/"
