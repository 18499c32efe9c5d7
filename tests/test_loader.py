"""The loader's speed options: the decode modes, photo-like test files, prefetching, persistent workers."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dataloaders.datasets import ImageDataset, PairDataset, loader_options
from dataloaders.records import GalleryImage, TrainPair
from dataloaders.synthetic_photo import photo_like, write_photo_clips
from dataloaders.transforms import build_transform


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_photo_clips(tmp_path_factory.mktemp("photos"), clips=2, frames=3)


def test_photo_like_frames_compress_like_livestream_frames(clips):
    frame, shop = clips[0][0][0], clips[0][1]
    with Image.open(frame) as img:
        assert img.size == (455, 256) and img.format == "JPEG"
        pixels = np.asarray(img.convert("L"), np.float32)
    assert 15_000 < os.path.getsize(frame) < 60_000  # a flat drawing of this size takes a few kB
    assert np.abs(np.diff(pixels, axis=1)).mean() > 1.5 and pixels.std() > 20  # texture and structure, not flat
    assert Image.open(shop).size == (256, 256)
    again = np.asarray(photo_like(np.random.default_rng((0, 0)), 455, 256))
    assert not np.array_equal(again, np.asarray(photo_like(np.random.default_rng((0, 1)), 455, 256)))


@pytest.mark.parametrize("style,train", [("v1", False), ("v2", False), ("v2", True)])
def test_tv_decode_stays_within_one_grey_level_of_exact(clips, tmp_path, style, train):
    """`--decode tv` (torchvision decode + uint8 resize) against the exact PIL path: same crop and flip
    draws, every pixel within 1 grey level, almost all equal (an off-by-one crop would move many)."""
    grey, cmyk, progressive, png = (tmp_path / name for name in ("grey.jpg", "cmyk.jpg", "prog.jpg", "shop.png"))
    Image.open(clips[0][0][0]).convert("L").save(grey, quality=90)
    Image.open(clips[0][0][1]).convert("CMYK").save(cmyk, quality=90)  # decoded by PIL in every mode
    Image.open(clips[0][0][2]).save(progressive, quality=90, progressive=True)
    Image.open(clips[0][1]).save(png)
    exact = build_transform(style, train, 64)
    tv = build_transform(style, train, 64, decode="tv")
    assert tv.decode == "tv" and "decode='tv'" in repr(tv)
    for path in [*clips[0][0], clips[0][1], str(grey), str(cmyk), str(progressive), str(png)]:
        for seed in range(3):
            a = exact.read(path, np.random.default_rng(seed)).int()
            b = tv.read(path, np.random.default_rng(seed))
            assert b.dtype == torch.uint8 and b.shape == (3, 64, 64) and b.is_contiguous()
            diff = (a - b.int()).abs()
            assert diff.max() <= 1 and diff.float().mean() < 0.05, (path, seed)
    with pytest.raises(ValueError, match="unknown decode mode"):
        build_transform("v1", False, 64, decode="nvjpeg")
    from dataloaders.transforms import DECODE_CHOICES
    from utils.options import DECODE_CHOICES as FLAG_CHOICES  # the torch-free copy the flags offer

    assert FLAG_CHOICES == DECODE_CHOICES


def test_tv_decode_skips_unreadable_files_like_exact(clips, tmp_path):
    frames, shop = clips[0]
    truncated, garbage = tmp_path / "cut.jpg", tmp_path / "junk.jpg"
    data = open(frames[0], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    missing = str(tmp_path / "missing.jpg")
    tv = build_transform("v1", False, 32, decode="tv")
    for path in (truncated, garbage, missing):
        item = ImageDataset([GalleryImage("x", str(path), "")], tv)[0]
        assert item["ok"] is False and item["skipped"] == [str(path)]
    t = build_transform("v1", True, 32, decode="tv")
    pair = TrainPair("c", [str(truncated), frames[1], missing], "i", shop)
    item = PairDataset([pair], t, t, max_frames=3)[0]
    assert item["frame_mask"].tolist() == [True, False, False]
    assert sorted(item["skipped"]) == sorted([str(truncated), missing])


class _Logged(Dataset):
    """Appends each index it loads to a file (workers are separate processes)."""

    def __init__(self, log):
        self.log = log

    def __len__(self):
        return 64

    def __getitem__(self, index):
        with open(self.log, "a") as f:
            f.write(f"{index}\n")
        return index


def _loaded(log, expected, settle=0.5, timeout=30.0):
    """How many items the workers loaded: once `expected` are there (or at the timeout), plus any
    that come within `settle` seconds more."""
    count = lambda: len(log.read_text().split()) if log.exists() else 0  # noqa: E731
    deadline = time.monotonic() + timeout
    while count() < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    return count()


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_factor_sets_how_many_batches_a_worker_prepares_ahead(tmp_path, prefetch):
    """With the consumer not reading, one worker loads exactly prefetch_factor batches, then waits."""
    log = tmp_path / "loaded.txt"
    loader = DataLoader(_Logged(log), batch_size=4, **loader_options(1, prefetch))
    it = iter(loader)
    assert _loaded(log, prefetch * 4) == prefetch * 4
    assert next(it).tolist() == [0, 1, 2, 3]
    del it


def test_loader_options_drop_worker_flags_without_workers():
    from dataloaders.datasets import ignore_stop_signals

    stop = {"worker_init_fn": ignore_stop_signals}  # workers outlive a job-wide stop signal
    assert loader_options(0, 4, True) == {"num_workers": 0}
    assert loader_options(2, None, True) == {"num_workers": 2, "persistent_workers": True, **stop}
    assert loader_options(2, 5) == {"num_workers": 2, "persistent_workers": False, "prefetch_factor": 5, **stop}


def test_workers_in_a_process_group_start_from_a_forkserver_and_load_the_same_batches(small_data):
    """In a torch.distributed group the loaders' workers come from a fork server (started clean, with
    torch and the datasets imported) and load what the process itself loads; alone, PyTorch's default."""
    import multiprocessing.forkserver
    import socket

    import torch.distributed as dist

    from dataloaders.datasets import FORKSERVER_PRELOAD, collate_samples, ignore_stop_signals
    from dataloaders.lpr4m import load_lpr4m_train

    t = build_transform("v2", True, 32)
    dataset = PairDataset(load_lpr4m_train(small_data / "lpr4m"), t, t, max_frames=2)
    in_process = list(DataLoader(dataset, batch_size=8, collate_fn=collate_samples))
    assert "multiprocessing_context" not in loader_options(2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert "multiprocessing_context" not in loader_options(0)
        options = loader_options(2, 2)
        context = options.pop("multiprocessing_context")
        assert context.get_start_method() == "forkserver"
        assert multiprocessing.forkserver._forkserver._preload_modules == FORKSERVER_PRELOAD
        assert options == {"num_workers": 2, "persistent_workers": False, "prefetch_factor": 2,
                           "worker_init_fn": ignore_stop_signals}
        from_workers = list(DataLoader(dataset, batch_size=8, collate_fn=collate_samples, **loader_options(2)))
    finally:
        dist.destroy_process_group()
    assert len(from_workers) == len(in_process) == 6
    for got, want in zip(from_workers, in_process):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) if isinstance(want[k], torch.Tensor) else got[k] == want[k]
                   for k in want)


def test_fork_server_and_its_workers_outlive_a_stop_signal_to_every_process():
    """A scheduler's SIGTERM reaches every process of a job. The fork server and a worker it forked
    get it too and keep serving batches for longer than PyTorch's 5 s check of a worker's parent:
    a worker whose server had died would have ended by then, failing its loader."""
    import signal

    from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL

    from dataloaders.datasets import fork_server_context, ignore_stop_signals
    from tests.processes import parent_pid

    loader = DataLoader(range(12), batch_size=4, num_workers=1, prefetch_factor=1,
                        multiprocessing_context=fork_server_context(), worker_init_fn=ignore_stop_signals)
    it = iter(loader)
    assert next(it).tolist() == [0, 1, 2, 3]
    worker = it._workers[0].pid
    server = parent_pid(worker)
    assert server != os.getpid()  # the worker is the fork server's child, not this process's
    for pid in (server, worker):
        os.kill(pid, signal.SIGTERM)
    time.sleep(MP_STATUS_CHECK_INTERVAL + 1.5)
    assert Path(f"/proc/{server}").exists()
    assert [batch.tolist() for batch in it] == [[4, 5, 6, 7], [8, 9, 10, 11]]


def test_workers_started_right_after_collectives_do_not_hang(tmp_path):
    """Two gloo processes each start a loader worker 300 times right after all-reduces. Forked
    directly from such a process, a worker blocked forever in os.fork in 5 of 8 such runs (the
    test then fails by its timeout); started from the fork server, in none."""
    from tests.processes import ROOT, torchrun_two

    torchrun_two(ROOT / "tests" / "fork_hang_worker.py", 300, tmp_path / "out.txt", timeout=240)
    assert (tmp_path / "out.txt").read_text().split() == ["600", "forkserver"]


STEPS = 15  # 48 pairs / batch 8 = 6 steps per epoch: epochs end at steps 6 and 12, the run in the third


def _train(data, out, *extra):
    import lpr4m_train

    return lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(data / "lpr4m"), "--model_config", "tiny",
                             "--transform_style", "v2", "--max_frames", "2", "--batch_size", "8",
                             "--max_steps", str(STEPS), "--lr", "1e-3", "--coef_lr", "1", "--log_every_steps", "1",
                             "--no_progress", "--no_tensorboard", "--output_dir", str(out), *extra])


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_persistent_workers_see_every_epoch_and_resume_exactly(small_data, tmp_path, monkeypatch):
    """v2 crops/flips and the frame draw depend on the epoch: with workers that live across epochs the
    losses of every step (epochs 1-3) and the final weights equal those of loading in the process itself,
    also when the run stops mid-epoch 2 and resumes. Worker processes are counted by their pid."""
    from utils.train import trainer
    from utils.train.build import StopRequest

    pids = tmp_path / "pids.txt"
    real_getitem = PairDataset.__getitem__

    def recording(self, key):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real_getitem(self, key)

    monkeypatch.setattr(PairDataset, "__getitem__", recording)  # forked workers inherit it

    def workers():
        seen = set(pids.read_text().split()) - {str(os.getpid())}
        pids.unlink()
        return len(seen)

    reference = _train(small_data, tmp_path / "in_process", "--num_workers", "0")
    assert workers() == 0
    persistent = _train(small_data, tmp_path / "persistent", "--num_workers", "1", "--persistent_workers",
                        "--prefetch_factor", "1")
    assert workers() == 1  # one worker process served all three epochs
    assert _losses(tmp_path / "persistent") == _losses(tmp_path / "in_process")
    _train(small_data, tmp_path / "fresh", "--num_workers", "1")
    assert workers() == 3  # without the flag: a new worker per epoch
    assert _losses(tmp_path / "fresh") == _losses(tmp_path / "in_process")

    # Stop after step 8 (epoch 2), then resume with persistent workers.
    steps = {"n": 0}
    real_step = trainer.train_step

    def counting(*args, **kwargs):
        steps["n"] += 1
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", counting)
    monkeypatch.setattr(StopRequest, "agreed", lambda self, device: steps["n"] == 8)
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit, match="stopped by a signal at step 8"):
        _train(small_data, stopped, "--num_workers", "1", "--persistent_workers")
    resumed = _train(small_data, stopped, "--num_workers", "1", "--persistent_workers", "--resume", "latest")
    assert _losses(stopped) == _losses(tmp_path / "in_process")
    ref = torch.load(reference["model_path"], weights_only=True)["model"]
    for run in (persistent, resumed):
        got = torch.load(run["model_path"], weights_only=True)["model"]
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_keyed_epoch_sampler_carries_the_epoch_to_the_dataset(small_data):
    from dataloaders.lpr4m import load_lpr4m_train
    from dataloaders.samplers import EpochSampler

    plain = EpochSampler(48, world_size=2, rank=1, local_batch=4, seed=3)
    keyed = EpochSampler(48, world_size=2, rank=1, local_batch=4, seed=3, keyed=True)
    for s in (plain, keyed):
        s.set_epoch(2, start_sample=8)
    keys = list(keyed)
    assert keys == [(2, i) for i in plain] and len(keyed) == len(plain) == 20
    t = build_transform("v2", True, 32)
    dataset = PairDataset(load_lpr4m_train(small_data / "lpr4m"), t, t, max_frames=2)
    dataset.set_epoch(2)  # the int-key spelling of the same sample
    for key in keys[:2]:
        a, b = dataset[key], dataset[key[1]]
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["image"], b["image"])
    dataset.set_epoch(0)
    assert not torch.equal(dataset[keys[0]]["frames"], dataset[keys[0][1]]["frames"])


def test_bench_loader_compares_old_exact_and_fast_paths(capsys):
    """A tiny run of benchmarks/bench_loader.py: the three paths from files and shards, the batch sizes, the key=value
    last line."""
    from benchmarks import bench_loader

    threads = torch.get_num_threads()
    try:
        results = bench_loader.main(["--clips", "2", "--batch_size", "2", "--batches", "1", "--workers", "0"])
    finally:
        torch.set_num_threads(threads)  # the benchmark measures on one thread
    lines = capsys.readouterr().out.strip().splitlines()
    paths = {("old", 0), ("exact", 0), ("fast", 0)}
    assert set(results) == {(source, *p) for source in ("files", "shards") for p in paths}
    assert all(v > 0 for v in results.values())
    pixels = 2 * 11 * 3 * 224 * 224  # 2 clips of 10 frames + 1 image
    assert f"old  : {4 * pixels / 2**20:.1f} MiB" in next(line for line in lines if "old  :" in line and "MiB" in line)
    assert f"exact: {pixels / 2**20:.1f} MiB" in next(line for line in lines if "exact:" in line and "MiB" in line)
    last = dict(item.split("=") for item in lines[-1].split())
    assert list(last)[:4] == ["old_clips_s_core", "exact_clips_s_core", "fast_clips_s_core", "fast_speedup"]
    assert float(last["fast_speedup"]) == pytest.approx(results["files", "fast", 0] / results["files", "old", 0],
                                                        rel=0.01)
    assert float(last["shards_exact_clips_s_core"]) == pytest.approx(results["shards", "exact", 0], abs=0.06)
    start = next(line for line in lines if line.startswith("an epoch's first batch"))
    assert f"(its start: {last['worker_start_forkserver_s']} s)" in start
    assert f"(a worker's start: {last['worker_start_s']} s)" in start


def test_loader_flags_reach_training_and_evaluation_loaders(small_data, tmp_path, monkeypatch, expect_error):
    import lpr4m_embedding_eval
    from utils.eval import features
    from utils.train import trainer

    seen = []

    def recording(module):
        real = module.DataLoader

        def spy(*args, **kwargs):
            seen.append((module.__name__, {k: kwargs.get(k) for k in ("num_workers", "prefetch_factor",
                                                                        "persistent_workers")}))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "DataLoader", spy)

    recording(trainer)
    recording(features)
    run = _train(small_data, tmp_path / "run", "--max_steps", "1", "--num_workers", "1", "--prefetch_factor", "3",
                 "--persistent_workers")
    assert seen == [("utils.train.trainer", {"num_workers": 1, "prefetch_factor": 3, "persistent_workers": True})]
    seen.clear()
    eval_args = ["--data_root", str(small_data / "lpr4m"), "--ckpt_path", run["model_path"], "--output_dir",
                 str(tmp_path / "eval"), "--embedding_sim", "--no_progress"]
    lpr4m_embedding_eval.main([*eval_args, "--num_workers", "1", "--prefetch_factor", "3"])
    assert seen == [("utils.eval.features", {"num_workers": 1, "prefetch_factor": 3, "persistent_workers": False})] * 2
    seen.clear()
    lpr4m_embedding_eval.main([*eval_args, "--num_workers", "0", "--prefetch_factor", "3"])  # no workers: unused
    assert seen == [("utils.eval.features", {"num_workers": 0, "prefetch_factor": None, "persistent_workers": None})] * 2
    with expect_error("--prefetch_factor must be >= 1, got 0"):
        lpr4m_embedding_eval.main([*eval_args, "--prefetch_factor", "0"])
    with expect_error("--prefetch_factor must be >= 1, got 0"):
        _train(small_data, tmp_path / "bad", "--prefetch_factor", "0")


def test_settle_before_fork_waits_for_finished_queues_feeder_threads():
    """A closed queue's feeder thread still writing (here: a 1 MB item nobody reads for 0.3 s) is
    waited for, so no Python thread is ending when the next DataLoader forks."""
    import multiprocessing
    import os
    import threading
    import time

    from dataloaders.datasets import settle_before_fork

    queue = multiprocessing.get_context("fork").Queue()
    pipe_end = os.dup(queue._reader.fileno())  # the "worker's" end, read only after 0.3 s
    queue.put(b"x" * 2**20)  # larger than a pipe: the feeder blocks until it is read
    queue.close()
    feeders = [t for t in threading.enumerate() if t.name == "QueueFeederThread"]
    assert any(t.is_alive() for t in feeders)

    def read_all():
        got = 0
        while got < 2**20:
            got += len(os.read(pipe_end, 2**20))
        os.close(pipe_end)

    reader = threading.Timer(0.3, read_all)
    reader.start()
    start = time.perf_counter()
    settle_before_fork(timeout=10)
    assert not any(t.is_alive() for t in feeders)
    assert 0.2 < time.perf_counter() - start < 10
    reader.join()
