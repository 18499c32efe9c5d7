"""benchmarks/bench_vs_authors.py refuses to run without the authors' checkout, in one line.

The authors' code is not part of this project, so only the refusals are tested:
no --authors_repo, a folder that does not exist, one without their files, one
with their file names but another version of their code, and a batch too small
for their hard negatives. None of these imports torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_vs_authors.py"
AUTHORS_FILES = ("main_task_retrieval.py", "module/modeling.py", "module/util_module.py", "module/module_clip.py",
                 "module/module_cross.py", "module/optimization.py", "module/cross-base/cross_config.json")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --authors_repo"), proc.stderr
    assert "95b6ca5" in lines[0] and proc.stdout == "", proc.stdout
    return lines[0]


def test_missing_authors_repo_is_a_one_line_error():
    line = _one_line_error(_run("--model", "tiny"))
    assert "is required" in line


def test_folder_that_does_not_exist(tmp_path):
    line = _one_line_error(_run("--authors_repo", str(tmp_path / "nowhere")))
    assert "not a folder" in line


@pytest.mark.parametrize("present", [0, 1, len(AUTHORS_FILES) - 1])
def test_folder_without_their_files_names_the_first_missing_one(tmp_path, present):
    for name in AUTHORS_FILES[:present]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    line = _one_line_error(_run("--authors_repo", str(tmp_path)))
    assert f"no {AUTHORS_FILES[present]} there" in line


def test_other_version_of_their_code(tmp_path):
    for name in AUTHORS_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("class CLIP4Clip:\n    pass\n")  # a model without PFR (recons_feat)
    line = _one_line_error(_run("--authors_repo", str(tmp_path)))
    assert "another version" in line


def test_batch_too_small_for_their_hard_negatives(tmp_path):
    proc = _run("--authors_repo", str(tmp_path), "--batch", "3")
    assert proc.returncode == 2 and "--batch must be >= 4" in proc.stderr
