"""The project's structure: import layers, fast --help, one-line errors of every entry script."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = ("lpr4m_train.py", "lpr4m_embedding_eval.py", "movingfashion_eval.py")
# Packages and the parts of utils each may import (docs/design.md): arrows only point down.
ALLOWED_UTILS = {
    "modules": {"utils.errors", "utils.runtime"},
    "dataloaders": {"utils.errors", "utils.runtime"},
    "utils/runtime": {"utils.errors", "utils.runtime"},
    "utils/eval": {"utils.errors", "utils.runtime", "utils.options", "utils.eval"},
    "recognition": {"utils.errors", "utils.runtime", "utils.eval"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED_UTILS))
def test_lower_layers_never_import_upper_ones(package):
    allowed = ALLOWED_UTILS[package]
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        for name in _imports(path):
            if name == "utils" or name.startswith("utils."):
                assert any(name == a or name.startswith(a + ".") for a in allowed), f"{path}: imports {name}"


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_help_imports_no_torch(script):
    """--help is read first: it must not wait for torch, torchvision or PyAV to import (numpy is cheap)."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'av') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "--row" in done.stdout
    assert "HEAVY []" in done.stdout, done.stdout[-300:]
    text = " ".join(done.stdout.split())  # help lines unwrapped
    assert "(default: None)" not in text and not re.search(r"default:? [^()]*\)? \(default:", text), text


@pytest.mark.parametrize("script, argv, message", [
    ("lpr4m_train.py", ["--resume", "junk.pt"], "junk.pt: cannot read this training checkpoint"),
    ("lpr4m_embedding_eval.py", ["--data_root", ".", "--ckpt_path", "junk.pt"], "junk.pt"),
    ("movingfashion_eval.py", ["--data_root", ".", "--ckpt_path", "junk.pt"], "junk.pt"),
])
def test_entry_scripts_report_errors_in_one_line_with_exit_code_2(tmp_path, script, argv, message):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    argv = [a if a != "junk.pt" else str(tmp_path / "junk.pt") for a in argv]
    if script == "lpr4m_train.py":
        argv += ["--dataset", "synthetic", "--data_root", str(tmp_path / "data"), "--model_config", "tiny",
                 "--output_dir", str(tmp_path / "out"), "--num_workers", "0", "--max_frames", "2"]
    done = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
