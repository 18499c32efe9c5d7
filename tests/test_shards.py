"""Streaming shards: packing (release layout, img2dataset files and webdataset output), a killed
pack resumed, the same samples as from the files, damaged shards skipped, training on shards
with 2 ranks x 2 workers, SIGKILL + resume bit-identical, one-line errors."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import lpr4m_train
from dataloaders.datasets import PairDataset, SkipReport, collate_samples
from dataloaders.lpr4m import load_lpr4m_train
from dataloaders.sampling import train_frame_indices
from dataloaders.shard_format import MEMBER_DTYPE, ShardSet, expand_braces, sidecar_path
from dataloaders.shards import ShardPairDataset, ShardSampler, shard_epoch_order
from dataloaders.transforms import build_transform
from tests.processes import descendants
from tests.test_data_lpr4m import _to_img2dataset
from tests.test_train_resume import _weights
from tools.index_img2dataset import main as index_main
from tools.pack_shards import main as pack_main

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _pack(data_root: Path, out: Path, *extra: str) -> dict:
    return pack_main(["--data_root", str(data_root), "--output_dir", str(out), "--samples_per_shard", "10",
                      "--workers", "1", *extra])


def _members(tar: Path) -> dict[str, bytes]:
    """Every member of a tar, read with the standard library's tar reader (the oracle)."""
    with tarfile.open(tar) as f:
        return {info.name: f.extractfile(info).read() for info in f}


def _all_members(folder: Path) -> dict[str, bytes]:
    return {name: data for tar in sorted(folder.glob("*.tar")) for name, data in _members(tar).items()}


@pytest.fixture(scope="module")
def damaged(small_data, tmp_path_factory):
    """A copy of the small set (48 pairs) with a missing frame, a non-JPEG frame and a missing shop image,
    packed 10 pairs per shard. Returns (data root, shard folder, pairs)."""
    root = tmp_path_factory.mktemp("damaged") / "lpr4m"
    shutil.copytree(small_data / "lpr4m", root)
    pairs = load_lpr4m_train(root)
    Path(pairs[3].frame_paths[1]).unlink()
    Path(pairs[5].frame_paths[0]).write_bytes(b"<html>not found</html>")
    Path(pairs[7].image_path).unlink()
    _pack(root, root.parent / "shards")
    return root, root.parent / "shards", pairs


def test_pack_release_layout_writes_every_frame_and_reports_what_is_missing(damaged):
    root, shards, pairs = damaged
    members = _all_members(shards)
    keys = sorted({name.split(".", 1)[0] for name in members})
    assert keys == [f"{row:09d}" for row in range(48) if row != 7]        # the pair without a shop image is dropped
    for row in range(48):
        if row == 7:
            continue
        key, pair = f"{row:09d}", pairs[row]
        meta = json.loads(members[f"{key}.json"])
        assert (meta["clip_id"], meta["image_id"], meta["frames"], meta["row"]) == \
               (pair.clip_id, pair.image_id, len(pair.frame_paths), row)
        assert meta["frame_sources"] == [os.path.relpath(p, root) for p in pair.frame_paths]
        assert members[f"{key}.shop.jpg"] == Path(pair.image_path).read_bytes()       # original bytes
        for k, path in enumerate(pair.frame_paths):
            name = f"{key}.f{k:04d}.jpg"
            if (row, k) in ((3, 1), (5, 0)):
                assert name not in members
            else:
                assert members[name] == Path(path).read_bytes()
    report = json.loads((shards / "pack_report.json").read_text())
    assert {kind: v["count"] for kind, v in report.items()} == \
           {"dropped_sample": 1, "missing_frame": 1, "corrupt_frame": 1}
    lines = [line.split("\t") for line in (shards / "pack_report.tsv").read_text().splitlines()[1:]]
    assert sorted((kind, int(row), member, reason) for kind, row, _, member, reason, _ in lines) == [
        ("corrupt_frame", 5, "f0000", "not a JPEG"), ("dropped_sample", 7, "shop", "missing"),
        ("missing_frame", 3, "f0001", "missing")]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [9, 10, 10, 10, 8] and manifest["samples"] == 47
    # the sidecar gives each member's bytes by offset, as the tar reader finds them
    tar = shards / "train-000001.tar"
    side = np.load(sidecar_path(tar))
    blob = tar.read_bytes()
    theirs = _members(tar)
    assert len(side) == len(theirs)
    for row, slot, _, offset, size in side.tolist():
        name = f"{row:09d}." + ("json" if slot == -1 else "shop.jpg" if slot == -2 else f"f{slot:04d}.jpg")
        assert blob[offset:offset + size] == theirs[name]


def _shard_and_file_items(damaged, style: str, epoch: int):
    root, shards, pairs = damaged
    transform = build_transform(style, True, 32)
    files = PairDataset(pairs, transform, transform, max_frames=4, seed=7)
    shard_set = ShardSet(str(shards / "train-{000000..000004}.tar"))
    packed = ShardPairDataset(shard_set, transform, transform, max_frames=4, seed=7)
    files.set_epoch(epoch)
    packed.set_epoch(epoch)
    rows = [row for row in range(48) if row != 7]
    return [(files[row], packed[i]) for i, row in enumerate(rows)]


@pytest.mark.parametrize("style, epoch", [("v2", 0), ("v2", 3), ("v1", 1)])
def test_a_sample_from_shards_equals_the_sample_from_files(damaged, style, epoch):
    pairs = 0
    for mine, theirs in _shard_and_file_items(damaged, style, epoch):
        assert all(torch.equal(mine[k], theirs[k]) for k in ("image", "frames", "frame_mask"))
        assert mine["image"].dtype == theirs["frames"].dtype == torch.uint8
        # a frame missing (or not a JPEG) is skipped at the same position by both
        assert len(mine["skipped"]) == len(theirs["skipped"]) and mine["replaced"] == theirs["replaced"] == 0
        pairs += 1
    assert pairs == 47


def _webdataset_downloads(files: dict[str, Path], out: Path) -> None:
    """img2dataset's webdataset output: 00000.tar holding 000000001.jpg + .json, 7 samples per tar."""
    out.mkdir(parents=True)
    items = sorted(files.items())
    for t in range(0, len(items), 7):
        with tarfile.open(out / f"{t // 7:05d}.tar", "w") as tar:
            for k, (key, src) in enumerate(items[t:t + 7], start=t):
                for ext, data in (("jpg", src.read_bytes()),
                                  ("json", json.dumps({"url": f"https://cdn.example.com/{key}.jpg"}).encode()),
                                  ("txt", b"caption")):
                    info = tarfile.TarInfo(f"{k:09d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_pack_from_img2dataset_files_and_webdataset_output(small_data, tmp_path):
    pairs = load_lpr4m_train(small_data / "lpr4m")
    frames = {Path(f).stem: Path(f) for p in pairs for f in p.frame_paths}
    images = {p.image_id: Path(p.image_path) for p in pairs}
    ann = tmp_path / "orig"
    ann.mkdir()
    (ann / "training_videoinfo_full_48.txt").write_text("".join(
        f"{p.clip_id}\t{json.dumps([Path(f).stem for f in p.frame_paths])}\t[]\t{p.image_id}\ttitle\n"
        for p in pairs))
    _to_img2dataset(frames, tmp_path / "files" / "frames")
    _to_img2dataset(images, tmp_path / "files" / "images")
    # webdataset output: the frames of a clip lie in different download shards
    _webdataset_downloads(frames, tmp_path / "wds" / "frames")
    _webdataset_downloads(images, tmp_path / "wds" / "images")
    for kind in ("files", "wds"):
        if kind == "wds":      # a second training TSV: --train_annotation chooses
            (ann / "training_videoinfo_other_48.txt").write_text("nothing here\n")
        counts = index_main(["--output", str(tmp_path / f"{kind}.tsv"), str(tmp_path / kind / "frames"),
                             str(tmp_path / kind / "images")])
        assert counts["indexed"] == len(frames) + len(images)
        _pack(ann, tmp_path / f"shards_{kind}", "--index", str(tmp_path / f"{kind}.tsv"),
              *(["--train_annotation", "training_videoinfo_full_48.txt"] if kind == "wds" else []))
        members = _all_members(tmp_path / f"shards_{kind}")
        for row, pair in enumerate(pairs):
            key = f"{row:09d}"
            assert members[f"{key}.shop.jpg"] == Path(pair.image_path).read_bytes()
            assert [members[f"{key}.f{k:04d}.jpg"] for k in range(len(pair.frame_paths))] == \
                   [Path(f).read_bytes() for f in pair.frame_paths]
            assert json.loads(members[f"{key}.json"])["frames"] == len(pair.frame_paths)
        assert len(members) == sum(len(p.frame_paths) + 2 for p in pairs)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_pack_resumes_and_writes_what_an_uninterrupted_pack_writes(small_data, tmp_path, expect_error):
    root = tmp_path / "lpr4m"
    shutil.copytree(small_data / "lpr4m", root)
    reference = tmp_path / "reference"
    pack_main(["--data_root", str(root), "--output_dir", str(reference), "--samples_per_shard", "4", "--workers", "1"])
    # A frame of pair 25 (shard 6 of 12) becomes a FIFO: reading it blocks, as on a stalled network disk.
    frame = Path(load_lpr4m_train(root)[25].frame_paths[0])
    saved = frame.read_bytes()
    frame.unlink()
    os.mkfifo(frame)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "pack_shards.py"), "--data_root", str(root), "--output_dir", str(out),
           "--samples_per_shard", "4", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while not list(out.glob(".train-000006.tar.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    with expect_error(r"(?m)^error: another pack_shards.py is writing into .*out; wait for it"):
        pack_main(cmd[2:])                                  # a second pack into the same folder meanwhile
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("train-*")}
    assert sorted(done) == [f"train-{s:06d}.{ext}" for s in range(6) for ext in ("idx.npy", "tar")]
    assert not (out / "manifest.json").exists() and list(out.glob(".train-000006.tar.tmp-*"))
    frame.unlink()
    frame.write_bytes(saved)
    result = pack_main(cmd[2:-1] + ["2"])                   # resumed with 2 processes
    assert result["written"] == list(range(6, 12))
    assert {p: (q.stat().st_ino, q.stat().st_mtime_ns) for p in done for q in [out / p]} == done   # not rewritten
    assert _tree(out) == _tree(reference)                   # byte for byte, temporary files gone
    assert pack_main(cmd[2:])["written"] == []              # a finished pack has nothing left to do


def test_damaged_members_and_a_truncated_shard_are_counted_and_skipped(damaged, tmp_path, caplog):
    shards = tmp_path / "shards"
    shutil.copytree(damaged[1], shards)
    side1 = np.load(sidecar_path(shards / "train-000001.tar"))
    side4 = np.load(sidecar_path(shards / "train-000004.tar"))
    # bad JPEG bytes in frame 0 (always sampled) of the first sample of shard 1
    first = side1[(side1["row"] == side1["row"][0]) & (side1["slot"] == 0)][0]
    with open(shards / "train-000001.tar", "r+b") as f:
        f.seek(int(first["offset"]) + 20)
        f.write(b"\x00" * 200)
    # a damaged header: the shop image member of the last sample of shard 1
    shop = side1[(side1["row"] == side1["row"][-1]) & (side1["slot"] == -2)][0]
    with open(shards / "train-000001.tar", "r+b") as f:
        f.seek(int(shop["offset"]) - 512)
        f.write(b"garbage!")
    # shard 4 cut in the middle of its 5th sample's shop image
    cut = side4[(side4["row"] == np.unique(side4["row"])[4]) & (side4["slot"] == -2)][0]
    os.truncate(shards / "train-000004.tar", int(cut["offset"]) + 10)
    caplog.set_level("WARNING")
    shard_set = ShardSet(str(shards))
    assert "1 shards are shorter than their index says (first: train-000004.tar)" in caplog.text
    transform = build_transform("v1", True, 32)
    dataset = ShardPairDataset(shard_set, transform, transform, max_frames=4, seed=7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=collate_samples,
                                         timeout=120)
    report, indices = SkipReport("train", max_examples=100), []
    for batch in loader:
        report.update(batch)
        indices += batch["index"].tolist()
    assert len(indices) == 47                                # every sample gives an item: no crash, no hang
    reasons = [s.rsplit(" (", 1)[1] for s in report.examples]
    key = f"{int(first['row']):09d}"
    assert f"{shards / 'train-000001.tar'}:{key}.f0000.jpg (cannot decode)" in report.examples
    assert f"{shards / 'train-000001.tar'}:{int(shop['row']):09d}.shop.jpg (tar header damaged)" in report.examples
    # The items that come back, by PairDataset's replacement rule: the sample with the damaged shop header
    # (index 18) gives sample 19; samples 5..8 of shard 4 (indices 43..46) lost their shop image and give
    # sample 0 (the next readable one, wrapping round); the sample with the bad frame 0 (index 9) gives 10
    # only when frame 0 is the one frame its sampler keeps.
    n = int(first["frames"])
    only_frame_0 = train_frame_indices(n, 4, np.random.default_rng((7, 0, int(first["row"])))) == [0]
    expected = list(range(47))
    expected[18], expected[43:] = 19, [0, 0, 0, 0]
    if only_frame_0:
        expected[9] = 10
    assert indices == expected
    assert report.num_replaced == 5 + only_frame_0 and reasons.count("shard truncated)") == 4   # 4 distinct members


def test_missing_sidecar_bad_pattern_and_bad_flags_are_one_line_errors(damaged, tmp_path, expect_error):
    shards = tmp_path / "shards"
    shutil.copytree(damaged[1], shards)
    original = sidecar_path(shards / "train-000002.tar").read_bytes()
    sidecar_path(shards / "train-000002.tar").unlink()
    base = ["--dataset", "lpr4m", "--model_config", "tiny", "--output_dir", str(tmp_path / "run"), "--num_workers",
            "0", "--max_steps", "1", "--batch_size", "8", "--max_frames", "2", "--no_progress", "--no_tensorboard"]
    with expect_error(r"(?m)^error: .*train-000002\.tar has no index sidecar train-000002\.idx\.npy; build it with "
                      r"`python tools/pack_shards.py --index_only --output_dir .*shards`$"):
        lpr4m_train.main(base + ["--train_shards", str(shards / "train-{000000..000004}.tar")])
    pack_main(["--index_only", "--output_dir", str(shards)])   # rebuilt by scanning the tar: the packer's bytes
    assert sidecar_path(shards / "train-000002.tar").read_bytes() == original
    assert _tree(shards) == _tree(damaged[1])
    # a sidecar cut short (its shard's last samples cannot be found): those samples are skipped and replaced
    side = sidecar_path(shards / "train-000003.tar")
    os.truncate(side, side.stat().st_size - 100)
    transform = build_transform("v1", True, 32)
    item = ShardPairDataset(ShardSet(str(shards)), transform, transform, max_frames=2)[38]
    assert item["index"] == 39 and item["replaced"] == 1
    assert item["skipped"] == [f"{shards / 'train-000003.tar'}:000000039 (sidecar does not match samples.npy: run "
                               "tools/pack_shards.py --index_only)"]
    side.write_bytes(damaged[1].joinpath(side.name).read_bytes())
    with expect_error(r"(?m)^error: --train_shards .*train-\{000000\.\.000009\}\.tar: 5 of 10 shards do not exist"):
        lpr4m_train.main(base + ["--train_shards", str(shards / "train-{000000..000009}.tar")])
    (shards / "manifest.json").unlink()
    with expect_error(r"has no manifest\.json .*--index_only --output_dir"):
        lpr4m_train.main(base + ["--train_shards", str(shards)])
    with expect_error(r"(?m)^error: --samples_per_shard must be at least 1, got 0$"):
        pack_main(["--data_root", str(damaged[0]), "--output_dir", str(tmp_path / "x"), "--samples_per_shard", "0"])
    with expect_error(r"(?m)^error: --output_dir .* holds shards packed with other settings \(samples_per_shard"):
        pack_main(["--data_root", str(damaged[0]), "--output_dir", str(damaged[1]), "--samples_per_shard", "12"])
    with expect_error("--shard_shuffle_window must be >= 1, got 0"):
        lpr4m_train.main(base + ["--train_shards", str(shards), "--shard_shuffle_window", "0"])
    assert expand_braces("a{00..02}-{x,y}.tar") == ["a00-x.tar", "a00-y.tar", "a01-x.tar", "a01-y.tar",
                                                    "a02-x.tar", "a02-y.tar"]


def test_shard_order_permutes_shards_and_shuffles_within_windows():
    sizes = np.array([5, 3, 4, 6, 2, 7, 1])
    shard_of = np.repeat(np.arange(len(sizes)), sizes)
    for window in (1, 2, 3, 7):
        order = shard_epoch_order(sizes, seed=3, epoch=1, window=window)
        assert sorted(order.tolist()) == list(range(sizes.sum()))
        # consecutive runs: the shards met in order, each window's samples all before the next window's
        seen = list(dict.fromkeys(shard_of[order].tolist()))
        bounds = np.cumsum([0] + [sizes[s] for s in seen])
        for w in range(0, len(seen), window):
            block = order[bounds[w]:bounds[min(w + window, len(seen))]]
            assert set(shard_of[block].tolist()) == set(seen[w:w + window])
        assert np.array_equal(order, shard_epoch_order(sizes, seed=3, epoch=1, window=window))
    assert not np.array_equal(shard_epoch_order(sizes, 3, 1, 2), shard_epoch_order(sizes, 3, 2, 2))
    # ranks get disjoint slices of each global batch; a resumed epoch continues where it stopped
    ranks = [ShardSampler(sizes, 2, r, 3, seed=3, window=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(4)
    whole = [list(s) for s in ranks]
    assert sorted(whole[0] + whole[1]) == sorted(shard_epoch_order(sizes, 3, 4, 2)[:24].tolist())
    for s in ranks:
        s.set_epoch(4, 12)
    assert [list(s) for s in ranks] == [w[6:] for w in whole]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(records: Path, shards: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(ROOT / "tests" / "record_worker.py"), str(records), "--dataset", "lpr4m", "--train_shards", str(shards),
            "--shard_shuffle_window", "2", "--model_config", "tiny", "--sim_header", "cross_attention",
            "--max_frames", "3", "--batch_size", "8", "--max_steps", "8", "--lr", "1e-3", "--coef_lr", "1",
            "--num_workers", "2", "--log_every_steps", "1", "--save_every_steps", "1", "--no_progress",
            "--no_tensorboard", "--device", "cpu", "--output_dir", str(out), "--resume", "latest"]


def _records(folder: Path) -> list[list[list[int]]]:
    return [[list(map(int, line.split())) for line in (folder / f"rank{r}.txt").read_text().splitlines()]
            for r in range(2)]


def test_training_on_shards_2_ranks_x_2_workers_sigkill_and_resume_is_bit_identical(small_data, tmp_path):
    shards = tmp_path / "shards"
    _pack(small_data / "lpr4m", shards)                        # 48 samples in 5 shards
    subprocess.run(_torchrun(tmp_path / "ref_records", shards, tmp_path / "reference"), env=_env(), check=True,
                   capture_output=True, timeout=TIMEOUT)
    ref = _records(tmp_path / "ref_records")
    assert [len(r) for r in ref] == [8, 8] and all(len(batch) == 4 for r in ref for batch in r)
    epoch0 = [i for r in ref for batch in r[:6] for i in batch]    # 6 global batches of 8 = one epoch
    assert sorted(epoch0) == list(range(48))                   # every sample once across 2 ranks x 2 workers

    kill_at = random.Random().choice([2, 3, 4, 5, 7])
    out, records = tmp_path / "run", tmp_path / "records"
    proc = subprocess.Popen(_torchrun(records, shards, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    log = out / "log.jsonl"
    while (not log.is_file() or len(log.read_text().splitlines()) < kill_at) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    # the whole node at once: torchrun, its ranks (each in a session of its own) and their loader workers
    for pid in [proc.pid, *descendants(proc.pid)]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}"
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 1 <= saved < 8 and not (out / "model.pt").exists()
    before = [len(r) for r in _records(records)]
    resumed = subprocess.run(_torchrun(records, shards, out), env=_env(), capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = _records(records)
    assert [r[n:] for r, n in zip(got, before)] == [r[saved:] for r in ref], (saved, before, got, ref)
    want, have = _weights(tmp_path / "reference" / "model.pt"), _weights(out / "model.pt")
    different = [k for k in want if not torch.equal(want[k], have[k])]
    assert not different, f"killed at step {kill_at} (checkpoint at {saved}): {different[:5]} differ"
    assert MEMBER_DTYPE.itemsize == 28


def test_pack_shards_help_imports_no_torch():
    code = ("import runpy, sys\nsys.argv = ['tools/pack_shards.py', '--help']\n"
            "try:\n    runpy.run_path('tools/pack_shards.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'torchvision', 'PIL') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--samples_per_shard" in done.stdout and "HEAVY []" in done.stdout, done.stdout[-500:] + done.stderr


def test_bench_pack_prints_its_figures_last(tmp_path, capsys):
    from benchmarks.bench_pack import main as bench_main

    figures = bench_main(["--clips", "3", "--frames", "3", "--workers", "1", "--samples_per_shard", "2",
                          "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.split() == [f"{k}={v}" for k, v in figures.items()]
    assert list(figures) == ["clips", "frames", "pack_s", "disk_mb", "per_million_clips_h", "per_million_clips_gb"]
    assert figures["clips"] == 3 and figures["frames"] == 9 and figures["disk_mb"] > 0
    assert "packed 3 of 3 pairs into 2 shards" in out
    assert list(tmp_path.iterdir()) == []                    # the generated data and shards are removed
