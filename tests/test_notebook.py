"""notebooks/tour.ipynb runs from top to bottom in a fresh kernel, headless (nbclient), as CI runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' brings nbformat and nbclient")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per cell on a busy 2-core CPU


def test_the_tour_notebook_runs_headless(tmp_path, monkeypatch):
    notebook = nbformat.read(ROOT / "notebooks" / "tour.ipynb", as_version=4)
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # this checkout's zoo
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("ZOO_APP_SHARE", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)  # gradio picks a free port
    client = nbclient.NotebookClient(
        notebook, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert errors == []
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "pipelines, for example: " in printed and "serving http://127.0.0.1:" in printed
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the generated image, a noised one, the map-conditioned one
