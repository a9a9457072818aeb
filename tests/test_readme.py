"""README.md's examples stay true: every Python block runs as written (in a scratch folder), and the front door
is the whole set-up (venv, CPU torch, install, run) with the test command CI runs right after it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for language, code in BLOCKS if language == "python"]


@pytest.mark.parametrize("code", PYTHON, ids=[f"block{i + 1}" for i in range(len(PYTHON))])
def test_every_python_block_runs_as_written(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace: dict = {"__name__": "readme"}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        if (demo := namespace.get("demo")) is not None:
            demo.close()


def test_the_first_block_is_the_whole_setup_and_the_second_the_tests():
    first, second = (code for _, code in BLOCKS[:2])
    assert "python -m venv .venv" in first and "pip install -e ." in first and "python app.py" in first
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in first
    assert first.index("pip install torch") < first.index("pip install -e .")  # torch first: no CUDA download
    marked = README.split("<!-- ci:test -->")[1].split("<!-- /ci:test -->")[0]
    assert second.strip() in marked and "python -m pytest" in second
    assert "<!-- ci:test -->" in (ROOT / ".ci" / "run").read_text()  # CI copies exactly this command
