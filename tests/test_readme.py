"""The README's commands and Python examples run as written (``python -m pytest -m readme``; CI runs it).

Every ```bash block after the set-up block is run command by command, every ```python block from
"## Python API" on is run in one namespace, in a fresh folder that sees the repository's
``fxmeta`` folder (for the committed metanetwork) and nothing else. ```sh blocks are examples
that need outside files or data and are not run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.readme


def blocks(kind: str) -> list[tuple[int, str]]:
    """(line number, text) of every fenced block of ``kind`` in README.md."""
    text = (ROOT / "README.md").read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(rf"^```{kind}\n(.*?)^```", text, re.S | re.M)]


def commands() -> list[tuple[int, str]]:
    out = []
    for line, block in blocks("bash")[1:]:  # the first block is the set-up
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip() and not cmd.lstrip().startswith("#"):
                out.append((line, cmd.strip()))
    return out


def test_the_readme_starts_with_the_two_set_up_commands():
    first = blocks("bash")[0][1].splitlines()
    assert first == ["pip install -e . && fxmeta demo", 'pip install -e ".[test]" && python -m pytest -q -n 2']
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "fxmeta").symlink_to(ROOT / "fxmeta")
    return tmp_path


@pytest.mark.parametrize("line, cmd", commands(), ids=[f"line{n}" for n, _ in commands()])
def test_readme_command_runs(line, cmd, workdir):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"README line {line}: {cmd}\n{proc.stderr[-2000:]}"


def test_readme_python_examples_run(workdir, monkeypatch):
    text = (ROOT / "README.md").read_text()
    start = text.index("## Python API")
    code = [block for line, block in blocks("python") if text.index(block) > start]
    assert code
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(ROOT))  # passes/ lives beside fxmeta/
    namespace: dict = {}
    for block in code:
        exec(compile(block, "README.md", "exec"), namespace)
