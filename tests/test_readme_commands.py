"""Every command block of README.md, run as written (real subprocesses, in bash, in the project's
environment) on synthetic stand-ins for the data and weights it names.

What differs from a user's run, and why:
  * STAND_INS: paths of real data sets and weights become synthetic ones made here (a tiny random
    CLIP in OpenAI's layout for ViT-B-32.pt, the built-in synthetic set for LPR750K and MovingFashion,
    img2dataset-like shard folders for the full LPR4M); /checkpoint/path becomes the model the
    README's training command wrote.
  * SHORTEN: the two commands that would train for hours get a few flags appended (fewer steps,
    frames, workers), so the block runs in seconds.
  * The first block (the two set-up commands) is what CI itself runs: `.ci/run` runs
    scripts/run_tests.sh, and tests/test_demo.py runs the demo (shortened).
The commands run in a scratch copy of the repository's top level (links), so the files they write
(data/, outputs/, demo_output/) land there. Each command's wall time is printed (pytest -s shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dataloaders.lpr4m import load_lpr4m_test, load_lpr4m_train
from dataloaders.synthetic import make_synthetic_dataset
from modules.config import VISION_CONFIGS
from tests.clip_state_dicts import openai_state_dict

ROOT = Path(__file__).resolve().parents[1]
SETUP_BLOCK = ["bash scripts/demo.sh", "bash scripts/run_tests.sh"]
SHORTEN = {
    "bash scripts/demo.sh --data_root": ("--max_steps 2000 --batch_size 32", "--max_steps 2 --batch_size 8 "
                                         "--max_frames 2 --num_workers 0 --no_progress"),
    "bash scripts/train_lpr4m_icl_pmd_pfr.sh": ("bash scripts/train_lpr4m_icl_pmd_pfr.sh",
                                                "bash scripts/train_lpr4m_icl_pmd_pfr.sh --max_steps 2 "
                                                "--batch_size 8 --max_frames 2 --num_workers 0 --no_progress"),
}


def readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _img2dataset_shards(files: dict[str, Path], out: Path) -> None:
    """Files stored as img2dataset does: 00000/000000001.jpg beside a .json holding the url."""
    for k, (key, src) in enumerate(sorted(files.items())):
        stem = out / f"{k // 100:05d}" / f"{k:09d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, stem.with_suffix(".jpg"))
        stem.with_suffix(".json").write_text(json.dumps({"url": f"https://cdn.example.com/{key}.jpg"}))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch top level linking the repository's entries, and the stand-ins of STAND_INS."""
    work = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "data", "outputs", "demo_output"):
            (work / entry.name).symlink_to(entry)
    if not (work / ".venv").exists():  # the environment running these tests
        (work / ".venv").symlink_to(Path(sys.executable).parent.parent)
    stand = tmp_path_factory.mktemp("stand_ins")
    syn = make_synthetic_dataset(stand / "syn", seed=1, num_train_lives=4, num_val_lives=1, num_test_lives=2,
                                 mf_train_products=2, mf_test_products=3)
    torch.save(openai_state_dict(VISION_CONFIGS["tiny"]), stand / "ViT-B-32.pt")
    lpr = Path(syn["lpr4m"])
    frames = {Path(f).stem: Path(f) for p in load_lpr4m_train(lpr)[:5] for f in p.frame_paths}
    images = {Path(g.path).stem: Path(g.path) for g in load_lpr4m_test(lpr).gallery[:5]}
    images.update({p.image_id: Path(p.image_path) for p in load_lpr4m_train(lpr)[:5]})
    annotations = stand / "lpr4m_annotations"       # original annotations (ids) of those 5 training clips
    annotations.mkdir()
    (annotations / "training_videoinfo_full_5.txt").write_text("".join(
        f"{p.clip_id}\t{json.dumps([Path(f).stem for f in p.frame_paths])}\t[]\t{p.image_id}\ttitle\n"
        for p in load_lpr4m_train(lpr)[:5]))
    _img2dataset_shards(frames, stand / "lpr4m_frames")
    _img2dataset_shards(images, stand / "lpr4m_images")
    stand_ins = {
        "/data/lpr750k": str(lpr),
        "/lpr4m/data/root/": str(lpr) + "/",
        "/models/ViT-B-32.pt": str(stand / "ViT-B-32.pt"),
        "/data/lpr4m_frames": str(stand / "lpr4m_frames"),
        "/data/lpr4m_images": str(stand / "lpr4m_images"),
        "/data/lpr4m_annotations": str(annotations),
        "/data/lpr4m_shards": str(stand / "lpr4m_shards"),
        "/data/MovingFashion": str(syn["movingfashion"]),
        "/checkpoint/path": str(work / "outputs" / "lpr4m_icl_pmd_pfr" / "model.pt"),
    }
    return work, stand_ins


def _prepared(block: str, stand_ins: dict[str, str]) -> str:
    for name, (old, new) in SHORTEN.items():
        if name in block:
            assert old in block, f"SHORTEN expects {old!r} in the README block {block!r}"
            block = block.replace(old, new)
    for placeholder, path in stand_ins.items():
        block = block.replace(placeholder, path)
    return block


def test_every_readme_block_runs_as_written(workdir):
    work, stand_ins = workdir
    blocks = readme_blocks()
    assert all(command in blocks[0] for command in SETUP_BLOCK), "the first block is the two set-up commands"
    assert any("source .venv/bin/activate" in b for b in blocks)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PYTHON")}
    ran = []
    for block in blocks[1:]:
        script = _prepared(block, stand_ins)
        # The README says to activate the environment once per shell: every block runs in such a shell.
        lines = "set -euo pipefail\nsource .venv/bin/activate\n" + script
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", lines], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
        print(f"[{seconds:6.1f} s] {block.strip()}")
        assert done.returncode == 0, f"README block failed:\n{script}\n--- stderr:\n{done.stderr[-3000:]}"
        ran.append(block)
    assert len(ran) == len(blocks) - 1
    # What the blocks promise, on disk.
    assert (work / "outputs" / "lpr4m_icl_pmd_pfr" / "model.pt").is_file()
    assert (work / "outputs" / "eval_lpr4m" / "metrics.json").is_file()
    assert (work / "data" / "synthetic" / "lpr4m" / "annotations").is_dir()
    assert "`data/synthetic/lpr4m`" in (ROOT / "README.md").read_text()  # the README names that data root
    assert (work / "lpr4m_index.tsv").is_file() and (work / "demo_output" / "curves.png").is_file()
    assert all((Path(stand_ins[f"/data/{name}_shards"]) / "manifest.json").is_file() for name in ("lpr4m",)) \
        and (work / "outputs" / "lpr750k_shards" / "model.pt").is_file()
