"""``edgeloop demo --fast`` runs end to end as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.broker
def test_demo_fast_runs_what_is_built(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edgeloop", "demo", "--fast", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "50/50 sample reports delivered and acknowledged" in result.stdout
    assert "not built yet" in result.stdout
    assert (tmp_path / "data" / "data.txt").exists()
    assert (tmp_path / "creds" / "acl").exists()
