"""Each plugin installs on its own into an environment that has only didmos-host."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run(*command, **env):
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_plugin_installs_beside_host_only_and_can_be_disabled(tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    pip, didmos = venv / "bin" / "pip", venv / "bin" / "didmos"
    # Build from a copy, so the build leaves nothing in the work tree.
    for name in ("host", "ldap"):
        source = ROOT if name == "host" else ROOT / "plugins" / "didmos_ldap"
        target = tmp_path / name
        run("cp", "-r", str(source), str(target))
    for extra in (".venv", "plugins", "tests", "bench", "docs", "var"):
        subprocess.run(["rm", "-rf", str(tmp_path / "host" / extra)], check=True)

    run(str(pip), "install", "--quiet", str(tmp_path / "host"))
    names = [row["name"] for row in json.loads(run(str(didmos), "plugins", "--json"))]
    assert names == ["didmos_host"]

    run(str(pip), "install", "--quiet", str(tmp_path / "ldap"))
    rows = {row["name"]: row for row in json.loads(run(str(didmos), "plugins", "--json"))}
    assert set(rows) == {"didmos_host", "didmos_ldap"}
    assert rows["didmos_ldap"]["version"] == "0.1.0" and "didmos_directory_migrations" in rows["didmos_ldap"]["hooks"]
    # its schema files are installed with it, not read from the source tree
    assert "0001-didmos-schema.ldif" in run(str(venv / "bin" / "python"), "-c",
                                            "import didmos_ldap.plugin as p; print([f.name for f in p.SCHEMA_DIR.iterdir()])")

    disabled = json.loads(run(str(didmos), "plugins", "--json", DIDMOS_DISABLE_PLUGINS="didmos_ldap"))
    assert [row["name"] for row in disabled] == ["didmos_host"]
