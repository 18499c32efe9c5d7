"""End-to-end tests of lpr4m_embedding_eval.py and movingfashion_eval.py.

A tiny random RICE model (ICL+PMD+PFR) is written as checkpoints in the v1,
v2, OpenAI and our own formats; the CLIs run on a small synthetic dataset.
Results are checked against oracles computed here: recall recomputed from
rankings.jsonl, rankings recomputed from features.npz, features recomputed
from the frames, PMD scores recomputed with the model.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lpr4m_embedding_eval
import movingfashion_eval
from dataloaders.lpr4m import load_lpr4m_test
from dataloaders.records import live_id_of
from dataloaders.synthetic import make_synthetic_dataset
from dataloaders.transforms import build_transform, load_rgb
from modules.checkpoint import load_checkpoint
from modules.clip_vit import ResidualAttentionBlock
from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel

ROOT = Path(__file__).resolve().parents[1]
PMD_KEYS = ("cross.", "similarity_dense.")


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(
        out, seed=0, num_train_lives=1, num_val_lives=1, num_test_lives=2, products_per_shop=6,
        categories_per_shop=2, test_clips_per_product=1, image_size=64, mf_train_products=2,
        mf_test_products=6, mf_videos_per_product=1, mf_seconds=(2, 3),
    )


def _text_tower(width: int) -> dict:
    """A one-block CLIP text tower (only what RICE reads from it, plus the rest of the names)."""
    torch.manual_seed(1)
    block = ResidualAttentionBlock(width, width // 64 or 1).state_dict()
    text = {f"transformer.resblocks.0.{k}": v for k, v in block.items()}
    text.update({"positional_embedding": torch.randn(77, width), "token_embedding.weight": torch.randn(100, width),
                 "ln_final.weight": torch.ones(width), "ln_final.bias": torch.zeros(width),
                 "text_projection": torch.randn(width, width), "logit_scale": torch.tensor(4.6)})
    return text


def _v1_dtype(name: str, t: torch.Tensor) -> torch.Tensor:
    """v1 files store conv/linear/attention weights in fp16 (docs/checkpoints.md)."""
    return t.half() if t.dim() >= 2 and "embedding" not in name and not name.endswith("proj") else t


@pytest.fixture(scope="session")
def model():
    torch.manual_seed(0)
    config = RICEConfig(VISION_CONFIGS["tiny"], sim_header="cross_attention", recons_feat=True)
    return RICEModel(config).eval()


@pytest.fixture(scope="session")
def ckpts(model, tmp_path_factory):
    """The same tiny model in every checkpoint format the CLI reads."""
    out = tmp_path_factory.mktemp("ckpts")
    state = model.state_dict()
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    heads = {k: v for k, v in state.items() if not k.startswith("visual.")}
    text = _text_tower(model.config.vision.embed_dim)
    paths = {}

    def save(name, obj):
        paths[name] = str(out / name)
        torch.save(obj, paths[name])

    save("ours.pt", {"format": "rice-repro", "format_version": 1, "model": state,
                     "model_config": model.config.to_dict()})
    v1 = {f"clip.visual.{k}": _v1_dtype(k, v) for k, v in visual.items()}
    v1.update({f"clip.{k}": _v1_dtype(k, v) for k, v in text.items()})
    save("v1_icl.bin", dict(v1))
    save("v1_pmd.bin", {**v1, **{k: _v1_dtype(k, v) for k, v in heads.items() if k.startswith(PMD_KEYS)}})
    save("v1_pmd_pfr.bin", {**v1, **{k: _v1_dtype(k, v) for k, v in heads.items()}})
    save("v2.pth", {f"module.image_encoder.model.{k}": v for k, v in visual.items()})
    save("openai.pt", {**{f"visual.{k}": v for k, v in visual.items()}, **text})
    return paths


def run_eval(data, ckpt, out, *flags, dataset="lpr4m"):
    entry = lpr4m_embedding_eval if dataset == "lpr4m" else movingfashion_eval
    argv = ["--data_root", data[dataset], "--ckpt_path", ckpt, "--output_dir", str(out),
            "--num_workers", "0", "--no_progress", *flags]
    return entry.main(argv)


def read_rankings(out):
    return [json.loads(line) for line in (Path(out) / "rankings.jsonl").read_text().splitlines()]


def recall_from_rankings(rankings, k):
    hits = sum(1 for r in rankings if {e["image_id"] for e in r["ranking"][:k]} & set(r["gt"]))
    return 100.0 * hits / len(rankings)


SEED_ROWS = {  # the README's three evaluation commands (the flags after --data_root)
    "v1_icl.bin": ["--n_gpu", "2", "--sim_header", "mean_pooling", "--one_stage", "--embedding_sim"],
    "v1_pmd.bin": ["--n_gpu", "2", "--sim_header", "cross_attention", "--cross_num_hidden_layers", "2",
                   "--embedding_sim"],
    "v1_pmd_pfr.bin": ["--n_gpu", "2", "--sim_header", "cross_attention", "--cross_num_hidden_layers", "2",
                       "--recons_feat", "--embedding_sim"],
}


@pytest.mark.parametrize("ckpt_name", list(SEED_ROWS))
def test_seed_commands_on_v1_checkpoints(data, ckpts, tmp_path, capsys, ckpt_name):
    metrics = run_eval(data, ckpts[ckpt_name], tmp_path, *SEED_ROWS[ckpt_name])
    assert "using the CPU" in capsys.readouterr().out  # --n_gpu 2 without GPUs, said once
    split = load_lpr4m_test(data["lpr4m"])
    rankings = read_rankings(tmp_path)
    assert [r["query_id"] for r in rankings] == [q.query_id for q in split.queries]
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["checkpoint_format"] == "rice_v1" and metrics["ranking"] == "embedding"
    assert metrics["num_queries"] == len(split.queries) and metrics["num_missing_queries"] == 0
    for k in (1, 3, 5, 10):
        assert metrics[f"R{k}"] == pytest.approx(recall_from_rankings(rankings, k), abs=1e-3)
    group_of = {g.image_id: g.group for g in split.gallery}
    for r, q in zip(rankings, split.queries):
        gallery_size = sum(g.group == q.group for g in split.gallery)
        assert len(r["ranking"]) == min(10, gallery_size)
        assert {group_of[e["image_id"]] for e in r["ranking"]} == {q.group}  # own livestream only
        scores = [e["score"] for e in r["ranking"]]
        assert scores == sorted(scores, reverse=True) and "pmd_score" not in r["ranking"][0]


def test_features_npz_reproduces_rankings(data, ckpts, tmp_path):
    run_eval(data, ckpts["ours.pt"], tmp_path, "--embedding_sim", "--sim_header", "cross_attention",
             "--save_features")
    f = np.load(tmp_path / "features.npz")
    assert f["query_features"].shape[0] == len(f["query_ids"]) and f["query_valid"].all()
    np.testing.assert_allclose(np.linalg.norm(f["gallery_features"], axis=1), 1, atol=1e-5)
    for r, qf in zip(read_rankings(tmp_path), f["query_features"]):
        own = np.flatnonzero(f["gallery_groups"] == live_id_of(r["query_id"]))  # its livestream's gallery
        sims = f["gallery_features"][own] @ qf
        best = own[np.argsort(-sims, kind="stable")][:10]
        assert [e["image_id"] for e in r["ranking"]] == list(f["gallery_ids"][best])
        np.testing.assert_allclose([e["score"] for e in r["ranking"]], np.sort(sims)[::-1][:10], atol=1e-5)


def test_v2_checkpoint_uses_v2_transform_and_pooling(data, ckpts, model, tmp_path):
    metrics = run_eval(data, ckpts["v2.pth"], tmp_path, "--save_features", "--max_frames", "4")
    assert metrics["checkpoint_format"] == "rice_v2" and metrics["video_pooling"] == "v2"
    # Oracle for one query: v2 eval transform, 4 frames by the eval rule, mean of raw frame embeddings.
    query = load_lpr4m_test(data["lpr4m"]).queries[0]
    n = len(query.frame_paths)
    picks = np.linspace(0, n, 4, endpoint=False).astype(int) if n > 4 else range(n)
    transform = build_transform("v2", train=False, image_size=64)
    frames = torch.stack([transform(load_rgb(query.frame_paths[i])) for i in picks])
    with torch.no_grad():
        emb, _ = model.visual(frames)
    expected = torch.nn.functional.normalize(emb.mean(0), dim=0).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "features.npz")["query_features"][0], expected, atol=1e-5)


def test_pmd_reranking_scores_and_order(data, ckpts, tmp_path):
    metrics = run_eval(data, ckpts["v1_pmd_pfr.bin"], tmp_path, "--sim_header", "cross_attention",
                       "--recons_feat", "--rerank_topk", "4", "--num_workers", "1")  # blocks load in a worker
    assert metrics["ranking"] == "pmd_rerank" and metrics["rerank_topk"] == 4
    assert set(metrics["embedding"]) == set(metrics["reranked"]) == {"R1", "R3", "R5", "R10"}
    assert metrics["R1"] == metrics["reranked"]["R1"]
    split = load_lpr4m_test(data["lpr4m"])
    model = RICEModel.from_checkpoint(load_checkpoint(ckpts["v1_pmd_pfr.bin"])).eval()  # fp16-stored weights
    transform = build_transform("v1", train=False, image_size=64)
    ids = [g.image_id for g in split.gallery]
    for r, q in list(zip(read_rankings(tmp_path), split.queries))[:2]:
        top = r["ranking"][:4]
        assert all("pmd_score" in e for e in top) and all("pmd_score" not in e for e in r["ranking"][4:])
        assert [e["pmd_score"] for e in top] == sorted((e["pmd_score"] for e in top), reverse=True)
        # Oracle: score the pairs directly with the model.
        n = len(q.frame_paths)
        picks = np.linspace(0, n, 10, endpoint=False).astype(int) if n > 10 else range(n)
        frames = torch.stack([transform(load_rgb(q.frame_paths[i])) for i in picks])[None]
        images = torch.stack([transform(load_rgb(split.gallery[ids.index(e["image_id"])].path)) for e in top])
        with torch.no_grad():
            _, vt, vm = model.encode_videos(frames, torch.ones(1, len(picks), dtype=torch.bool), return_tokens=True)
            _, it = model.encode_images(images, return_tokens=True)
            expected = model.score_pairs(it, vt.expand(len(top), -1, -1), vm.expand(len(top), -1))
        np.testing.assert_allclose([e["pmd_score"] for e in top], expected.numpy(), atol=1e-4)



def test_pmd_chunk_size_sets_the_reranking_chunks_not_the_scores(data, ckpts, tmp_path, pmd_decoder_chunks):
    chunks = pmd_decoder_chunks  # pairs of every PMD decoder call
    flags = ("--sim_header", "cross_attention", "--rerank_topk", "4")
    run_eval(data, ckpts["ours.pt"], tmp_path / "default", *flags)
    pairs = sum(chunks)
    assert chunks == [16] * (pairs // 16) + ([pairs % 16] if pairs % 16 else [])  # 16 on the CPU by default
    chunks.clear()
    run_eval(data, ckpts["ours.pt"], tmp_path / "small", *flags, "--pmd_chunk_size", "3")
    assert sum(chunks) == pairs and max(chunks) == 3 and len(chunks) >= pairs // 3
    scores = [[e.get("pmd_score") for e in r["ranking"]] for r in read_rankings(tmp_path / "default")]
    small = [[e.get("pmd_score") for e in r["ranking"]] for r in read_rankings(tmp_path / "small")]
    # rankings.jsonl keeps 6 decimals: one unit of rounding either way.
    np.testing.assert_allclose(np.array(small, dtype=float), np.array(scores, dtype=float), rtol=0, atol=2e-6)


def test_default_reranking_depth_and_one_stage(data, ckpts, tmp_path):
    metrics = run_eval(data, ckpts["ours.pt"], tmp_path / "rerank", "--sim_header", "cross_attention")
    assert metrics["ranking"] == "pmd_rerank" and metrics["rerank_topk"] == 5
    for r in read_rankings(tmp_path / "rerank"):
        assert sum("pmd_score" in e for e in r["ranking"]) == 5
    metrics = run_eval(data, ckpts["ours.pt"], tmp_path / "one", "--sim_header", "cross_attention", "--one_stage")
    assert metrics["ranking"] == "embedding" and "reranked" not in metrics


@pytest.mark.parametrize(
    "ckpt_name, flags, message",
    [
        ("v1_icl.bin", ["--sim_header", "cross_attention"], "no PMD head"),
        ("openai.pt", ["--sim_header", "cross_attention"], "no PMD head"),
        ("v1_pmd.bin", ["--sim_header", "cross_attention", "--recons_feat"], "no PFR weights"),
        ("v1_pmd.bin", ["--sim_header", "cross_attention", "--cross_num_hidden_layers", "3"], "has 2"),
        ("v1_pmd.bin", ["--recons_feat"], "needs --sim_header cross_attention"),
        ("v1_pmd.bin", ["--batch_size", "0"], "--batch_size must be >= 1"),
        ("v1_pmd.bin", ["--pmd_chunk_size", "0"], "--pmd_chunk_size must be >= 1"),
        ("v1_pmd.bin", ["--precision", "fp16"], "fp16 needs a GPU"),
    ],
)
def test_flags_contradicting_the_checkpoint_fail_clearly(data, ckpts, tmp_path, ckpt_name, flags, message, expect_error):
    with expect_error(message):
        run_eval(data, ckpts[ckpt_name], tmp_path, *flags)
    assert not (tmp_path / "metrics.json").exists()


def test_openai_checkpoint_and_determinism(data, ckpts, tmp_path, capsys):
    """Two runs: byte-identical outputs. Also: tqdm only without --no_progress."""
    run_eval(data, ckpts["openai.pt"], tmp_path, "--sim_header", "mean_pooling")
    first = [(tmp_path / n).read_bytes() for n in ("metrics.json", "rankings.jsonl")]
    assert "gallery" not in capsys.readouterr().err  # --no_progress
    argv = ["--data_root", data["lpr4m"], "--ckpt_path", ckpts["openai.pt"], "--output_dir", str(tmp_path),
            "--num_workers", "1", "--batch_size", "1"]
    metrics = lpr4m_embedding_eval.main(argv)
    assert "gallery" in capsys.readouterr().err  # progress bars by default
    assert metrics["checkpoint_format"] == "openai"
    second = [(tmp_path / n).read_bytes() for n in ("metrics.json", "rankings.jsonl")]
    # Batch size and workers do not change the rankings (scores up to float rounding).
    for a, b in zip(*(map(json.loads, x.decode().splitlines()) for x in (first[1], second[1]))):
        assert [e["image_id"] for e in a["ranking"]] == [e["image_id"] for e in b["ranking"]]
        np.testing.assert_allclose([e["score"] for e in a["ranking"]], [e["score"] for e in b["ranking"]], atol=2e-6)
    flags_free = [json.loads(b) for b in (first[0], second[0])]
    for m in flags_free:
        m.pop("flags")
    assert flags_free[0] == flags_free[1]
    run_eval(data, ckpts["openai.pt"], tmp_path, "--sim_header", "mean_pooling")
    assert [(tmp_path / n).read_bytes() for n in ("metrics.json", "rankings.jsonl")] == first


def test_precision_bf16_changes_compute_not_protocol(data, ckpts, tmp_path):
    run_eval(data, ckpts["ours.pt"], tmp_path / "fp32", "--save_features")
    run_eval(data, ckpts["ours.pt"], tmp_path / "bf16", "--save_features", "--precision", "bf16")
    a, b = (np.load(tmp_path / p / "features.npz")["query_features"] for p in ("fp32", "bf16"))
    assert not np.array_equal(a, b)
    assert (a * b).sum(axis=1).min() > 0.98  # same features up to bf16 rounding


def test_movingfashion_global_gallery(data, ckpts, tmp_path):
    metrics = run_eval(data, ckpts["v1_pmd_pfr.bin"], tmp_path, "--sim_header", "cross_attention",
                       "--recons_feat", "--embedding_sim", dataset="movingfashion")
    rankings = read_rankings(tmp_path)
    assert metrics["dataset"] == "movingfashion" and metrics["num_queries"] == len(rankings) == 6
    for r in rankings:
        ids = [e["image_id"] for e in r["ranking"]]
        assert len(ids) == len(set(ids)) == metrics["num_gallery_images"]  # the whole global gallery
    assert metrics["R1"] == pytest.approx(recall_from_rankings(rankings, 1), abs=1e-3)


def test_torchrun_two_processes_match_one(data, ckpts, tmp_path):
    flags = ["--data_root", data["lpr4m"], "--ckpt_path", ckpts["v1_pmd_pfr.bin"], "--num_workers", "0",
             "--no_progress", "--sim_header", "cross_attention", "--recons_feat", "--rerank_topk", "3",
             "--save_features"]
    single = lpr4m_embedding_eval.main([*flags, "--output_dir", str(tmp_path / "one")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "lpr4m_embedding_eval.py"), *flags, "--output_dir", str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-6000:]
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for key in ("R1", "R3", "R5", "R10", "embedding", "reranked", "num_queries", "num_missing_queries"):
        assert double[key] == single[key]
    one, two = read_rankings(tmp_path / "one"), read_rankings(tmp_path / "two")
    for a, b in zip(one, two):
        assert [e["image_id"] for e in a["ranking"]] == [e["image_id"] for e in b["ranking"]]
        np.testing.assert_allclose([e["score"] for e in a["ranking"]], [e["score"] for e in b["ranking"]], atol=2e-6)
    fa, fb = (np.load(tmp_path / d / "features.npz") for d in ("one", "two"))
    np.testing.assert_allclose(fa["query_features"], fb["query_features"], atol=1e-5)
    np.testing.assert_allclose(fa["gallery_features"], fb["gallery_features"], atol=1e-5)


def test_missing_frames_and_images_count_as_misses(data, ckpts, tmp_path):
    root = tmp_path / "lpr4m"
    shutil.copytree(data["lpr4m"], root, ignore=shutil.ignore_patterns("training_*"))
    split = load_lpr4m_test(root)
    lost_query = split.queries[0]
    for path in lost_query.frame_paths:
        Path(path).unlink()
    lost_image = next(g for g in split.gallery if g.image_id not in split.queries[1].gt)
    Path(lost_image.path).unlink()
    metrics = lpr4m_embedding_eval.main(["--data_root", str(root), "--ckpt_path", ckpts["ours.pt"], "--output_dir",
                                         str(tmp_path / "out"), "--num_workers", "0", "--no_progress",
                                         "--save_features"])
    assert metrics["num_queries"] == len(split.queries)  # still in the denominator
    assert metrics["num_missing_queries"] == 1 and metrics["num_missing_gallery_images"] == 1
    rankings = read_rankings(tmp_path / "out")
    assert rankings[0]["missing"] and rankings[0]["ranking"] == []
    assert all(e["image_id"] != lost_image.image_id for r in rankings for e in r["ranking"])
    assert metrics["R10"] == pytest.approx(recall_from_rankings(rankings, 10), abs=1e-3)
    f = np.load(tmp_path / "out" / "features.npz")
    assert f["query_valid"].tolist() == [q is not lost_query for q in split.queries]
    assert f["gallery_valid"].tolist() == [g is not lost_image for g in split.gallery]


def test_recipe_scripts_match_the_seed_rows(data, ckpts, tmp_path):
    """scripts/eval_*.sh pass `--row ROW --embedding_sim` (tests/test_train_recipes.py), which parses to the
    README's flags of that row; one of them is run for real."""
    from utils.eval.cli import parse_args

    rows = {"icl": "v1_icl.bin", "icl_pmd": "v1_pmd.bin", "icl_pmd_pfr": "v1_pmd_pfr.bin"}
    for dataset in ("lpr4m", "movingfashion"):
        for row, ckpt_name in rows.items():
            base = ["--data_root", "d", "--ckpt_path", "c"]
            by_row = vars(parse_args(dataset, [*base, "--row", row, "--embedding_sim"]))
            by_seed = vars(parse_args(dataset, [*base, *SEED_ROWS[ckpt_name][2:]]))  # without --n_gpu 2
            assert by_row.pop("row") == row and by_seed.pop("row") is None
            assert by_row == by_seed
    env = {**os.environ, "PYTHON": sys.executable, "OUTPUT_DIR": str(tmp_path), "N_GPU": "1"}
    script = ROOT / "scripts" / "eval_movingfashion_icl_pmd_pfr.sh"
    done = subprocess.run(["bash", str(script), data["movingfashion"], ckpts["v1_pmd_pfr.bin"], "--num_workers", "0",
                           "--no_progress"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "movingfashion" and metrics["flags"]["recons_feat"] is True


def test_n_gpu_spawns_one_process_per_gpu(data, ckpts, tmp_path, monkeypatch):
    """--n_gpu 2 with two (pretended) GPUs spawns two processes; on a CPU they use gloo. Their loading
    workers (started from a fork server, as in any process group) load what one process loads alone."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    flags = ["--sim_header", "cross_attention", "--embedding_sim", "--save_features"]
    spawned = run_eval(data, ckpts["ours.pt"], tmp_path / "two", "--n_gpu", "2", *flags, "--num_workers", "1")
    monkeypatch.undo()
    single = run_eval(data, ckpts["ours.pt"], tmp_path / "one", "--n_gpu", "1", *flags)
    assert spawned["flags"]["n_gpu"] == 2
    assert {k: spawned[k] for k in ("R1", "R3", "R5", "R10")} == {k: single[k] for k in ("R1", "R3", "R5", "R10")}
    fa, fb = (np.load(tmp_path / d / "features.npz") for d in ("one", "two"))
    np.testing.assert_allclose(fa["query_features"], fb["query_features"], atol=1e-5)
    np.testing.assert_allclose(fa["gallery_features"], fb["gallery_features"], atol=1e-5)


def test_annotation_file_flags(data, ckpts, tmp_path):
    """--query_file / --gt_file pick files the name patterns would not find."""
    ann = Path(data["lpr4m"]) / "annotations"
    queries = json.loads((ann / "query_tenframes.json").read_text())
    kept = dict(list(queries.items())[:5])
    (tmp_path / "five_queries.json").write_text(json.dumps(kept))
    gt = {clip: ["no-such-image"] for clip in queries}  # every query now misses
    (tmp_path / "wrong_gt.json").write_text(json.dumps(gt))
    metrics = run_eval(data, ckpts["ours.pt"], tmp_path / "out", "--query_file", str(tmp_path / "five_queries.json"),
                       "--gt_file", str(tmp_path / "wrong_gt.json"))
    assert metrics["num_queries"] == 5 and metrics["R10"] == 0.0
    assert [r["gt"] for r in read_rankings(tmp_path / "out")] == [["no-such-image"]] * 5


def test_img2dataset_index_layout_gives_the_release_results(data, ckpts, tmp_path):
    """Original LPR4M annotations (ids) + an img2dataset index == the release layout (paths)."""
    split = load_lpr4m_test(data["lpr4m"])
    files = {Path(f).stem: f for q in split.queries for f in q.frame_paths}
    files.update({g.image_id: g.path for g in split.gallery})
    lines = ["#root\t0\t/"] + [f"{key}\t0\t{path.lstrip('/')}" for key, path in files.items()]
    (tmp_path / "index.tsv").write_text("\n".join(lines) + "\n")
    ann = tmp_path / "orig"
    ann.mkdir()
    (ann / "test_videoid_to_gtimage_12.json").write_text(json.dumps({q.query_id: q.gt for q in split.queries}))
    (ann / "frames.json").write_text(json.dumps({Path(f).stem: [0, 0, 1, 1] for q in split.queries
                                                 for f in q.frame_paths}))
    galleries = {}
    for g in split.gallery:
        galleries.setdefault(g.group, []).append(g.image_id)
    (ann / "galleries.json").write_text(json.dumps(galleries))
    common = ["--ckpt_path", ckpts["ours.pt"], "--num_workers", "0", "--no_progress"]
    lpr4m_embedding_eval.main(["--data_root", data["lpr4m"], "--output_dir", str(tmp_path / "release"), *common])
    metrics = lpr4m_embedding_eval.main(
        ["--data_root", str(ann), "--index", str(tmp_path / "index.tsv"), "--frames_file", str(ann / "frames.json"),
         "--gallery_file", str(ann / "galleries.json"), "--output_dir", str(tmp_path / "index"), *common])
    assert metrics["num_queries"] == len(split.queries) and metrics["num_missing_gallery_images"] == 0
    rankings = [(tmp_path / d / "rankings.jsonl").read_bytes() for d in ("index", "release")]
    assert rankings[0] == rankings[1]
