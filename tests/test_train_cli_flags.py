"""Every flag of lpr4m_train.py has its effect (short in-process runs on the CPU).

Runs use the tiny encoder on the small synthetic dataset (48 training pairs).
Where a flag's effect is inside the loop, the test wraps a trainer function
(`train_step`, `atomic_save`, `validate`) to record what it was given, then
lets the real function run.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
import yaml

import lpr4m_train
from modules.checkpoint import load_checkpoint
from modules.config import VISION_CONFIGS
from modules.heads import PairwiseMatchingDecoder
from tests.clip_state_dicts import openai_state_dict
from utils.train import trainer
from utils.train.logs import read_log
from utils.train.scheduler import lr_factor


def _run(data, out, *extra: str, steps: int | None = 2) -> dict:
    argv = ["--dataset", "lpr4m", "--data_root", str(data / "lpr4m"), "--model_config", "tiny",
            "--max_frames", "2", "--batch_size", "8", "--lr", "1e-3", "--coef_lr", "1", "--num_workers", "0",
            "--log_every_steps", "1", "--no_progress", "--no_tensorboard", "--output_dir", str(out)]
    if steps is not None:
        argv += ["--max_steps", str(steps)]
    return lpr4m_train.main(argv + list(extra))


def _weights(result: dict) -> dict[str, torch.Tensor]:
    return torch.load(result["model_path"], map_location="cpu", weights_only=True)["model"]


def _same(a: dict, b: dict, prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture
def recorded_steps(monkeypatch):
    """Record (frames shape, accumulation, first image pixels) of every train_step call."""
    calls = []
    real = trainer.train_step

    def spy(model, batch, optimizer, precision, accumulation, clip_grad_norm, device, *rest):
        calls.append({"frames": tuple(batch["frames"].shape), "accumulation": accumulation,
                      "image": batch["image"][0].clone(), "precision": precision.name})
        return real(model, batch, optimizer, precision, accumulation, clip_grad_norm, device, *rest)

    monkeypatch.setattr(trainer, "train_step", spy)
    return calls


# --------------------------------------------------------------------------- data flags


def test_seed_changes_weights_and_worker_count_does_not(small_data, tmp_path):
    a = _weights(_run(small_data, tmp_path / "a", "--seed", "1"))
    b = _weights(_run(small_data, tmp_path / "b", "--seed", "1", "--num_workers", "2"))
    c = _weights(_run(small_data, tmp_path / "c", "--seed", "2"))
    assert _same(a, b)
    assert not _same(a, c)


def test_max_frames_batch_size_and_accumulation_shape_the_steps(small_data, tmp_path, recorded_steps, expect_error):
    _run(small_data, tmp_path / "a", "--max_frames", "3", "--batch_size", "16", "--gradient_accumulation_steps", "2",
         steps=1)
    assert recorded_steps[0]["frames"][:2] == (16, 3) and recorded_steps[0]["accumulation"] == 2
    with expect_error("cannot be split into --gradient_accumulation_steps 3"):
        _run(small_data, tmp_path / "b", "--gradient_accumulation_steps", "3", steps=1)


def test_transform_style_changes_the_pixels(small_data, tmp_path, recorded_steps):
    _run(small_data, tmp_path / "v1", steps=1)
    _run(small_data, tmp_path / "v2", "--transform_style", "v2", steps=1)
    v1, v2 = recorded_steps[0]["image"], recorded_steps[1]["image"]
    assert v1.shape == v2.shape == (3, 64, 64)
    assert not torch.equal(v1, v2)


def test_train_annotation_selects_the_pairs(small_data, tmp_path):
    release = next((small_data / "lpr4m" / "annotations").glob("training_videoinfo_4*.txt"))
    subset = tmp_path / "subset.txt"
    subset.write_text("".join(release.read_text().splitlines(keepends=True)[:16]))
    result = _run(small_data, tmp_path / "run", "--train_annotation", str(subset), "--epochs", "1", steps=None)
    assert result["step"] == 2  # 16 pairs / batch 8 (the full file: 6 steps per epoch)


def test_index_reads_the_original_id_layout(small_data, tmp_path, expect_error):
    """The same pairs given as ids + an img2dataset index train exactly like the release paths."""
    root = small_data / "lpr4m"
    release = next((root / "annotations").glob("training_videoinfo_4*.txt"))
    lines, index = [], {}
    for line in release.read_text().splitlines():
        cols = line.split("\t")
        frames = json.loads(cols[1].replace("'", '"'))
        ids = [f.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in frames]
        index.update(zip(ids, frames))
        index[cols[3]] = cols[4]
        lines.append("\t".join([cols[0], json.dumps(ids), cols[2], cols[3], *cols[4:]]))
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(lines) + "\n")
    index_file = tmp_path / "index.tsv"
    index_file.write_text(f"#root\t0\t{root}\n" + "".join(f"{k}\t0\t{v}\n" for k, v in index.items()))

    by_path = _weights(_run(small_data, tmp_path / "paths"))
    by_id = _weights(_run(small_data, tmp_path / "ids", "--train_annotation", str(ids_file), "--index",
                          str(index_file)))
    assert _same(by_path, by_id)
    with expect_error("index .*not found"):
        _run(small_data, tmp_path / "bad", "--index", str(tmp_path / "missing.tsv"))


def test_movingfashion_and_synthetic_datasets(small_data, tmp_path):
    mf = lpr4m_train.main(["--dataset", "movingfashion", "--data_root", str(small_data / "movingfashion"),
                           "--model_config", "tiny", "--max_frames", "2", "--batch_size", "4", "--max_steps", "1",
                           "--num_workers", "0", "--no_progress", "--no_tensorboard",
                           "--output_dir", str(tmp_path / "mf")])
    assert mf["step"] == 1
    synthetic = lpr4m_train.main(["--dataset", "synthetic", "--model_config", "tiny", "--max_frames", "2",
                                  "--batch_size", "8", "--max_steps", "1", "--num_workers", "0", "--no_progress",
                                  "--no_tensorboard", "--output_dir", str(tmp_path / "syn")])
    assert synthetic["step"] == 1
    assert (tmp_path / "syn" / "synthetic_data" / "lpr4m" / "annotations").is_dir()


# --------------------------------------------------------------------------- model flags


def test_model_flags_build_the_row(small_data, tmp_path):
    icl = load_checkpoint(_run(small_data, tmp_path / "icl", steps=1)["model_path"])
    assert icl.heads is None and icl.vision == VISION_CONFIGS["tiny"]
    deep = load_checkpoint(_run(small_data, tmp_path / "pfr", "--sim_header", "cross_attention",
                                "--cross_num_hidden_layers", "3", "--recons_feat", steps=1)["model_path"])
    assert (deep.heads.sim_header, deep.heads.cross_num_hidden_layers, deep.heads.recons_feat) == \
        ("cross_attention", 3, True)
    small = load_checkpoint(_run(small_data, tmp_path / "small", "--model_config", "small", steps=1)["model_path"])
    assert small.vision == VISION_CONFIGS["small"]


def test_pretrained_clip_initialises_the_encoder(small_data, tmp_path):
    clip = openai_state_dict(VISION_CONFIGS["tiny"], seed=3)
    path = tmp_path / "clip.pt"
    torch.save(clip, path)
    trained = _weights(_run(small_data, tmp_path / "run", "--pretrained_clip", str(path), "--lr", "0",
                            "--sim_header", "cross_attention"))
    for key, value in clip.items():
        if key.startswith("visual."):
            assert torch.equal(trained[key], value.float()), key
    assert torch.equal(trained["cross.transformer.resblocks.0.attn.in_proj_weight"],
                       clip["transformer.resblocks.0.attn.in_proj_weight"].float())


def test_init_model_starts_from_a_rice_checkpoint(small_data, tmp_path):
    first = _weights(_run(small_data, tmp_path / "first"))
    again = _weights(_run(small_data, tmp_path / "again", "--init_model", str(tmp_path / "first" / "model.pt"),
                          "--lr", "0"))
    assert _same(first, again)
    # From an ICL model to the PMD row: the encoder carries over, the new head starts fresh.
    grown = _weights(_run(small_data, tmp_path / "grown", "--init_model", str(tmp_path / "first" / "model.pt"),
                          "--lr", "0", "--sim_header", "cross_attention"))
    assert _same(first, grown, "visual.") and "cross.pooler.dense.weight" in grown


def test_grad_checkpointing_changes_memory_not_results(small_data, tmp_path):
    plain = _run(small_data, tmp_path / "plain", "--sim_header", "cross_attention", "--recons_feat")
    ckpt = _run(small_data, tmp_path / "ckpt", "--sim_header", "cross_attention", "--recons_feat",
                "--grad_checkpointing")
    assert ckpt["model"].grad_checkpointing and ckpt["model"].visual.transformer.grad_checkpointing
    assert not plain["model"].grad_checkpointing
    a, b = _weights(plain), _weights(ckpt)
    # similarity_dense.bias shifts all 4 PMD logits of an image equally, which the softmax cancels: its
    # gradient is 0 in exact arithmetic, so it receives rounding noise (different when recomputed), and
    # Adam rescales that noise into updates of up to ~lr*1e-3. Every other weight must agree.
    noise_only = "similarity_dense.bias"
    assert (a[noise_only] - b[noise_only]).abs().max() < 1e-5
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if k != noise_only)



def test_pmd_chunk_size_sets_the_decoder_chunks(small_data, tmp_path, pmd_decoder_chunks, expect_error):
    chunks = pmd_decoder_chunks  # pairs of every PMD decoder call
    pmd = ("--sim_header", "cross_attention", "--recons_feat")
    _run(small_data, tmp_path / "default", *pmd, steps=1)
    assert chunks == [16, 16]  # 8 pairs x (1 + 3 hard negatives); 16 on the CPU by default
    chunks.clear()
    small = _run(small_data, tmp_path / "small", *pmd, "--pmd_chunk_size", "5", steps=1)
    assert chunks == [5] * 6 + [2] and small["model"].config.pmd_chunk_size == 5
    # That the scores and gradients do not depend on the chunks: tests/test_meta_step.py.
    with expect_error("--pmd_chunk_size must be >= 1"):
        _run(small_data, tmp_path / "bad", "--pmd_chunk_size", "0")


def test_pmd_shared_dropout_runs_the_image_side_once_per_image(small_data, tmp_path, monkeypatch):
    rows = []  # images of every call of the decoder's image side
    real = PairwiseMatchingDecoder.image_side
    monkeypatch.setattr(PairwiseMatchingDecoder, "image_side", lambda self, x: rows.append(len(x)) or real(self, x))
    pmd = ("--sim_header", "cross_attention", "--pmd_chunk_size", "12")
    per_pair = _run(small_data, tmp_path / "pair", *pmd, steps=1)
    assert rows == [12, 12, 8] and not per_pair["model"].pmd_shared_dropout  # v1: each of the 32 pairs
    rows.clear()
    shared = _run(small_data, tmp_path / "shared", *pmd, "--pmd_shared_dropout", steps=1)
    assert rows == [8] and shared["model"].pmd_shared_dropout  # once per image of the batch


# --------------------------------------------------------------------------- optimisation flags


def test_lr_and_coef_lr_reach_their_groups(small_data, tmp_path):
    pmd = ("--sim_header", "cross_attention")
    start = _weights(_run(small_data, tmp_path / "start", *pmd, "--lr", "0"))
    frozen_encoder = _weights(_run(small_data, tmp_path / "enc", *pmd, "--coef_lr", "0"))
    assert _same(start, frozen_encoder, "visual.")
    assert not _same(start, frozen_encoder, "cross.")
    both = _weights(_run(small_data, tmp_path / "both", *pmd))
    assert not _same(start, both, "visual.")


def test_weight_decay_and_clip_grad_norm_change_the_update(small_data, tmp_path):
    base = _weights(_run(small_data, tmp_path / "base"))
    assert not _same(base, _weights(_run(small_data, tmp_path / "wd", "--weight_decay", "5")))
    unclipped = _run(small_data, tmp_path / "noclip", "--clip_grad_norm", "0")
    assert not _same(base, _weights(unclipped))
    norms = [r["grad_norm"] for r in read_log(tmp_path / "noclip" / "log.jsonl")]
    assert max(norms) > 1.0  # so clipping at 1.0 did change the base run


def test_warmup_and_schedule_in_the_log(small_data, tmp_path):
    _run(small_data, tmp_path / "run", "--warmup_proportion", "0.25", "--sim_header", "cross_attention",
         "--coef_lr", "0.1", steps=8)
    records = read_log(tmp_path / "run" / "log.jsonl")
    for r in records:
        factor = lr_factor(r["step"] - 1, 8, 2)  # the rate used by step s is set before it, at index s-1
        assert r["lr_heads"] == pytest.approx(1e-3 * factor)
        assert r["lr_encoder"] == pytest.approx(1e-4 * factor)
    assert records[0]["lr_heads"] == pytest.approx(0.5e-3)  # warm-up: step 1 of 2


def test_epochs_max_steps_and_checkpoint_files(small_data, tmp_path):
    result = _run(small_data, tmp_path / "epochs", "--batch_size", "16", "--epochs", "3", "--keep_checkpoints", "2",
                  steps=None)
    assert result["step"] == 9  # 48 pairs / 16 = 3 steps per epoch
    assert sorted(p.name for p in (tmp_path / "epochs" / "checkpoints").iterdir()) == \
        ["epoch_2.pt", "epoch_3.pt", "last.pt"]
    keep_all = _run(small_data, tmp_path / "all", "--batch_size", "16", "--epochs", "3", "--keep_checkpoints", "0",
                    steps=None)
    assert len(list((tmp_path / "all" / "checkpoints").glob("epoch_*.pt"))) == 3 and keep_all["step"] == 9
    assert _run(small_data, tmp_path / "steps", "--batch_size", "16", "--epochs", "3", steps=4)["step"] == 4


def test_save_every_steps(small_data, tmp_path, monkeypatch):
    saved = []
    real = trainer.atomic_save

    def spy(obj, path):
        saved.append((path.name, obj.get("step"), obj.get("sample_in_epoch")))
        return real(obj, path)

    monkeypatch.setattr(trainer, "atomic_save", spy)
    _run(small_data, tmp_path / "run", "--save_every_steps", "2", steps=5)
    assert ("last.pt", 2, 16) in saved and ("last.pt", 4, 32) in saved  # batch 8: the place is in samples
    assert ("last.pt", 5, 40) in saved  # the end of a run cut by --max_steps keeps its place
    saved.clear()
    _run(small_data, tmp_path / "never", "--save_every_steps", "0", steps=5)
    assert [s[0] for s in saved] == ["last.pt", "model.pt"]


def test_precision_flags(small_data, tmp_path, recorded_steps, expect_error):
    fp32 = _weights(_run(small_data, tmp_path / "fp32"))
    bf16 = _run(small_data, tmp_path / "bf16", "--precision", "bf16")
    assert recorded_steps[-1]["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(tmp_path / "bf16" / "log.jsonl"))
    assert not _same(fp32, _weights(bf16))
    with expect_error("fp16 needs a GPU"):
        _run(small_data, tmp_path / "fp16", "--precision", "fp16")


# --------------------------------------------------------------------------- run flags


def test_log_cadence_tensorboard_and_output_dir(small_data, tmp_path):
    _run(small_data, tmp_path / "run", "--log_every_steps", "2", steps=5)
    assert [r["step"] for r in read_log(tmp_path / "run" / "log.jsonl")] == [2, 4, 5]
    assert not (tmp_path / "run" / "tensorboard").exists()
    argv = ["--dataset", "lpr4m", "--data_root", str(small_data / "lpr4m"), "--model_config", "tiny",
            "--max_frames", "2", "--batch_size", "8", "--max_steps", "1", "--num_workers", "0", "--no_progress",
            "--output_dir", str(tmp_path / "tb")]
    lpr4m_train.main(argv)
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((tmp_path / "tb" / "args.yaml").read_text())
    assert saved["output_dir"] == str(tmp_path / "tb") and saved["max_steps"] == 1


def test_progress_bar_only_without_no_progress(small_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["--dataset", "lpr4m", "--data_root", str(small_data / "lpr4m"), "--model_config", "tiny",
            "--max_frames", "2", "--batch_size", "8", "--max_steps", "2", "--num_workers", "0", "--no_tensorboard"]
    lpr4m_train.main(argv + ["--output_dir", str(tmp_path / "bar")])
    assert "train:" in capsys.readouterr().err
    lpr4m_train.main(argv + ["--output_dir", str(tmp_path / "quiet"), "--no_progress"])
    assert "train:" not in capsys.readouterr().err


def test_resume_flag(small_data, tmp_path, expect_error):
    with expect_error("no such checkpoint file"):
        _run(small_data, tmp_path / "a", "--resume", str(tmp_path / "nothing.pt"))
    fresh = _run(small_data, tmp_path / "b", "--resume", "latest", steps=3)  # nothing to resume: starts afresh
    assert fresh["step"] == 3
    # An explicit checkpoint path continues from its step.
    shutil.copy(tmp_path / "b" / "checkpoints" / "last.pt", tmp_path / "at3.pt")
    more = _run(small_data, tmp_path / "c", "--resume", str(tmp_path / "at3.pt"), steps=5)
    assert [r["step"] for r in read_log(tmp_path / "c" / "log.jsonl")] == [4, 5] and more["step"] == 5


def test_resume_with_a_file_that_is_no_training_checkpoint_is_one_line(small_data, tmp_path, expect_error):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with expect_error(r"(?m)^error: .*junk\.pt: cannot read this training checkpoint.*$"):
        _run(small_data, tmp_path / "a", "--resume", str(junk))
    model_only = _run(small_data, tmp_path / "b", steps=1)["model_path"]
    with expect_error(r"model\.pt is not a training checkpoint .*use --init_model"):
        _run(small_data, tmp_path / "c", "--resume", model_only)


def test_transform_style_is_saved_with_the_model_and_used_by_evaluation(small_data, tmp_path):
    """A model trained with --transform_style v2 is evaluated (and validated) with the v2 eval transform."""
    import numpy as np

    import lpr4m_embedding_eval
    from dataloaders.lpr4m import load_lpr4m_test
    from dataloaders.transforms import build_transform, load_rgb
    from modules.rice import RICEModel

    result = _run(small_data, tmp_path / "v2", "--transform_style", "v2", steps=1)
    ckpt = load_checkpoint(result["model_path"])
    assert ckpt.extra["model_config"]["transform_style"] == "v2"
    model = RICEModel.from_checkpoint(ckpt).eval()
    assert model.config.preprocessing == "v2" and model.config.video_pooling == "v1"

    root = small_data / "lpr4m"
    lpr4m_embedding_eval.main(["--data_root", str(root), "--ckpt_path", result["model_path"], "--output_dir",
                               str(tmp_path / "eval"), "--embedding_sim", "--num_workers", "0", "--no_progress",
                               "--save_features"])
    stored = np.load(tmp_path / "eval" / "features.npz")["gallery_features"][0]
    path = load_lpr4m_test(root).gallery[0].path
    with torch.no_grad():
        by_style = {style: model.encode_images(build_transform(style, False, 64)(load_rgb(path))[None])[0][0]
                    for style in ("v1", "v2")}
    assert torch.allclose(torch.from_numpy(stored), by_style["v2"], atol=1e-5)
    assert not torch.allclose(by_style["v1"], by_style["v2"], atol=1e-3)  # the check can tell them apart


def test_validate_one_stage_and_val_max_queries(small_data, tmp_path, monkeypatch):
    sizes = []
    real = trainer.validate

    def spy(model, split, runtime, **kw):
        sizes.append(len(split.queries))
        return real(model, split, runtime, **kw)

    monkeypatch.setattr(trainer, "validate", spy)
    pmd = ("--sim_header", "cross_attention", "--validate", "--batch_size", "16", "--epochs", "2")
    _run(small_data, tmp_path / "two", *pmd, steps=None)
    val = [r for r in read_log(tmp_path / "two" / "log.jsonl") if "val" in r]
    assert [r["epoch"] for r in val] == [1, 2]
    assert all(set(r["val"]) == {"R1", "R5", "R10"} and "val_reranked" in r for r in val)
    _run(small_data, tmp_path / "one", *pmd, "--one_stage", "--val_max_queries", "5", steps=None)
    val = [r for r in read_log(tmp_path / "one" / "log.jsonl") if "val" in r]
    assert len(val) == 2 and not any("val_reranked" in r for r in val)
    assert sizes == [24, 24, 5, 5]  # the validation file holds 24 clips
    _run(small_data, tmp_path / "off", "--batch_size", "16", "--epochs", "1", steps=None)
    assert not any("val" in r for r in read_log(tmp_path / "off" / "log.jsonl"))


def test_device_flag(small_data, tmp_path, expect_error):
    result = _run(small_data, tmp_path / "cpu", "--device", "cpu", steps=1)
    assert next(result["model"].parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with expect_error("no GPU is visible"):
            _run(small_data, tmp_path / "cuda", "--device", "cuda", steps=1)


def test_config_yaml_is_overridden_by_the_command_line(small_data, tmp_path, expect_error):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.5\nweight_decay: 0.3\nsim_header: cross_attention\n")
    _run(small_data, tmp_path / "run", "--config", str(config), "--lr", "0.01", steps=1)
    saved = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert (saved["lr"], saved["weight_decay"], saved["sim_header"]) == (0.01, 0.3, "cross_attention")
    again = lpr4m_train.main(["--config", str(tmp_path / "run" / "args.yaml"), "--output_dir", str(tmp_path / "again")])
    resaved = yaml.safe_load((tmp_path / "again" / "args.yaml").read_text())
    assert {k: v for k, v in resaved.items() if k != "output_dir"} == \
        {k: v for k, v in saved.items() if k != "output_dir"} and again["step"] == 1
    config.write_text("sim_headr: cross_attention\n")
    with expect_error("unknown keys \\['sim_headr'\\]"):
        _run(small_data, tmp_path / "bad", "--config", str(config))


def test_resume_with_other_model_flags_is_a_clear_error(small_data, tmp_path, expect_error):
    _run(small_data, tmp_path / "icl", steps=1)
    with expect_error("holds another model than these flags build"):
        _run(small_data, tmp_path / "pmd", "--sim_header", "cross_attention", "--resume",
             str(tmp_path / "icl" / "checkpoints" / "last.pt"), steps=2)


def test_decode_flags_reach_the_transforms(small_data, tmp_path, monkeypatch, expect_error):
    import lpr4m_embedding_eval
    from utils.eval import retrieval

    seen = []

    def recording(module):
        real = module.build_transform

        def spy(*args, **kwargs):
            seen.append((module.__name__, kwargs.get("decode")))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "build_transform", spy)

    recording(trainer)
    recording(retrieval)
    fast = _run(small_data, tmp_path / "fast", "--fast_decode", steps=1)
    _run(small_data, tmp_path / "tv", "--decode", "tv", steps=1)
    _run(small_data, tmp_path / "exact", steps=1)
    assert seen == [("utils.train.trainer", "draft"), ("utils.train.trainer", "tv"), ("utils.train.trainer", "exact")]
    seen.clear()
    for flags in (["--fast_decode"], ["--decode", "tv"], []):
        lpr4m_embedding_eval.main(["--data_root", str(small_data / "lpr4m"), "--ckpt_path", fast["model_path"],
                                   "--output_dir", str(tmp_path / "eval"), "--embedding_sim", "--num_workers", "0",
                                   "--no_progress", *flags])
    assert seen == [("utils.eval.retrieval", "draft"), ("utils.eval.retrieval", "tv"), ("utils.eval.retrieval", "exact")]
    with expect_error("--fast_decode means --decode draft; it contradicts --decode tv"):
        _run(small_data, tmp_path / "both", "--fast_decode", "--decode", "tv", steps=1)
