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


def test_make_demo_quick_tells_the_whole_story(tmp_path):
    """`make demo` in its CI form: two days, two nights of consolidation on SmolLM2-135M, the report."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "support_agent_demo.py"), "--quick", "--store", str(tmp_path / "s")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "v1 promoted" in out and "v2 promoted" in out, out
    assert "alice's recall saw 0 of bob's; items with personal data in any adapter's lineage: 0" in out
    assert "blinks blue" in out.split("from the weights alone")[1], "the day-one correction, answered from weights"
    assert (tmp_path / "report" / "index.html").is_file()
