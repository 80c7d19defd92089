"""Runs every notebook in colab/ top to bottom on its tiny setting (fails if a cell fails)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: commit notebooks with outputs stripped"
    code = "\n\n".join(
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
    )
    script = tmp_path / "nb.py"
    script.write_text(code)
    env = dict(os.environ, DIFFREC_TINY="1", MPLBACKEND="Agg")
    out = subprocess.run(
        [sys.executable, str(script)], cwd=path.parent, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{path.name} failed:\n{out.stderr[-4000:]}"
