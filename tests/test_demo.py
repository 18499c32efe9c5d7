"""The demo pipeline (tools/demo.py) end to end, at a reduced size.

Synthetic data -> the three ablation rows trained with a tiny ViT -> each
evaluated by lpr4m_embedding_eval -> table, results.md and curves.png. The
assertions check the files and that the models really learned: the ICL row's
R1 must be well above the chance level of the same galleries, which the test
recomputes itself from the annotation files.
"""

import json
import math
from pathlib import Path

import pytest

from tools import demo


def _chance_r1(data_root: Path) -> float:
    """Expected R1 of a random ranking, straight from the release files."""
    ann = data_root / "annotations"
    gallery: dict[str, set[str]] = {}
    for line in (ann / "gallery_main.txt").read_text().split():
        live_id, name = line.split("/")
        gallery.setdefault(live_id, set()).add(name.rsplit("-", 1)[0])
    gt_file = next(ann.glob("test_videoid_to_gtimage*.json"))
    total = 0.0
    queries = json.loads(gt_file.read_text())
    for clip_id, gts in queries.items():
        shop = gallery["-".join(clip_id.split("-")[:5])]
        total += len(set(gts) & shop) / len(shop)
    return 100.0 * total / len(queries)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = demo.main(["--output_dir", str(out), "--max_steps", "60", "--num_workers", "0", "--no_progress"])
    return out, result


def test_demo_writes_table_and_curves(demo_run, capsys):
    out, result = demo_run
    table = (out / "results.md").read_text()
    for row in ("ICL", "ICL+PMD", "ICL+PMD+PFR", "chance"):
        assert f"| {row} |" in table
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    for row in ("ICL", "ICL_PMD", "ICL_PMD_PFR"):
        assert (out / "runs" / row / "model.pt").is_file()
        assert (out / "runs" / row / "eval" / "metrics.json").is_file()


def test_demo_chance_level_matches_independent_count(demo_run):
    out, result = demo_run
    assert math.isclose(result["chance"]["R1"], _chance_r1(out / "data" / "lpr4m"), rel_tol=1e-9)


def test_demo_models_learn_well_above_chance(demo_run):
    out, result = demo_run
    chance = result["chance"]["R1"]
    icl = result["results"]["ICL"]["R1"]
    assert icl >= 2.0 * chance, f"ICL R1 {icl:.2f} vs chance {chance:.2f}"
    for row in ("ICL+PMD", "ICL+PMD+PFR"):
        assert result["results"][row]["R1"] > chance, (row, result["results"][row]["R1"], chance)
