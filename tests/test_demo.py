"""`make demo` runs the fast-memory demo; a short run must tell the whole story without errors."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_keeps_scopes_apart(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fast_memory_demo.py"), "--days", "5", "--store", str(tmp_path / "s")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "recall hit rate: 9/9" in out
    assert "alice's recall saw 0 of bob's" in out
    assert "her contact detail now recalled: False" in out
    assert "consistent: True" in out
