"""The wheel installs one top-level package, `engramma`; the four folders are its subpackages."""
import subprocess
import sys
import zipfile
from pathlib import Path

import engramma
import engramma.memory

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_the_engramma_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), "-q"], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("engramma-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"engramma"}, f"the wheel installs more than engramma: {sorted(top_level)}"
    for sub in ("memory", "policies", "updater", "agents"):
        assert f"engramma/{sub}/__init__.py" in names
    assert "engramma/memory/store.py" in names
    assert "engramma/py.typed" in names
    assert not any(name.startswith("tests/") for name in names)


def test_editable_install_maps_the_folders_into_engramma():
    # `make test` installs the project in editable mode: the subpackage must come from the repo's memory/.
    assert Path(engramma.memory.__file__).resolve() == ROOT / "memory" / "__init__.py"
    out = subprocess.run([sys.executable, "-c", "import memory"], capture_output=True, text=True, cwd="/")
    assert out.returncode != 0, "a top-level `memory` module is importable: the package-dir mapping leaks"
