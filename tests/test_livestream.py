"""Livestream recognition (recognize_livestream.py, recognition/) and the evaluation's --report.

Oracles written here: brute-force Viterbi over every path, window embeddings
recomputed with RICEModel.encode_videos on the window's frames, the
evaluation CLI's features.npz (a subprocess) for the API, frame times of a
variable-frame-rate file written here. Real files throughout: mp4s written
with PyAV, corrupted by overwriting bytes, shop folders with junk in them.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import recognize_livestream
from dataloaders.synthetic_livestream import make_synthetic_livestream
from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from recognition.api import Recognizer
from recognition.livestream import score_livestream
from recognition.scoring import score, segment_f1
from recognition.timeline import viterbi, window_starts
from recognition.video import DecodeStats, sample_frames
from tools import score_timeline

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures
def _save_model(path: Path, sim_header: str) -> str:
    torch.manual_seed(0)
    model = RICEModel(RICEConfig(VISION_CONFIGS["tiny"], sim_header=sim_header))
    torch.save({"format": "rice-repro", "format_version": 1, "model": model.state_dict(),
                "model_config": model.config.to_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    out = tmp_path_factory.mktemp("live_ckpt")
    return {"icl": _save_model(out / "icl.pt", "mean_pooling"), "pmd": _save_model(out / "pmd.pt", "cross_attention")}


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """A tiny ICL model trained for 150 steps (about 8 s) on the synthetic training pairs."""
    import lpr4m_train

    out = tmp_path_factory.mktemp("live_train")
    done = lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(small_data / "lpr4m"), "--model_config", "tiny",
                             "--row", "icl", "--max_steps", "150", "--batch_size", "16", "--max_frames", "1",
                             "--lr", "1e-3", "--coef_lr", "1", "--num_workers", "0", "--no_tensorboard",
                             "--no_progress", "--log_every_steps", "50", "--output_dir", str(out)])
    return done["model_path"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A 90-s card-style livestream (64 px, 4 fps) of 6 products: product segments, idle stretches, repeats."""
    out = tmp_path_factory.mktemp("live")
    return make_synthetic_livestream(out, seed=1, duration_s=90, num_products=6, categories=6, style="card", fps=4,
                                     width=64, height=64, segment_s=(6.0, 16.0), image_size=64)


def _run(live, ckpt, out, *flags):
    return recognize_livestream.main(["--video", live["video"], "--shop", live["shop"], "--ckpt", ckpt,
                                      "--output_dir", str(out), "--precision", "fp32", "--no_progress", *flags])


class _Page(HTMLParser):
    """Checks that every opened element is closed in order; collects src/href values."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.refs, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def check_html(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    assert page.stack == [], page.stack
    for ref in page.refs:  # inlined, or a file beside the page that exists
        assert ref.startswith("data:image/jpeg;base64,") or (path.parent / ref).is_file(), ref[:80]
    return page


# ---------------------------------------------------------------- the timeline
def test_timeline_beats_chance_and_writes_valid_outputs(live, trained, tmp_path):
    """The pipeline, default flags, on a card-style stream (frames show the shop image: an easy design
    that a 150-step model can read; the stream's products were never trained on). Idle stretches are
    not recognised by such a model, which caps the accuracy. The demo's model on the realistic scene
    design is measured by scripts/demo_livestream.sh.
    """
    result = _run(live, trained, tmp_path)
    schedule = json.loads(Path(live["schedule"]).read_text())
    assert any(s["image_id"] is None for s in schedule["segments"])  # idle stretches
    ids = [s["image_id"] for s in schedule["segments"] if s["image_id"]]
    assert len(ids) > len(set(ids))  # a product comes back
    metrics = score_timeline.main(["--schedule", live["schedule"], "--timeline", str(tmp_path / "timeline.json")])
    assert metrics["accuracy"] > metrics["chance_accuracy_majority"] + 25, metrics
    assert metrics["segment_f1"] > metrics["chance_segment_f1"] + 40, metrics
    # Outputs: json == csv, the segments tile the video, valid HTML with inlined images, a PNG.
    segs = json.loads((tmp_path / "timeline.json").read_text())["segments"]
    assert segs == result["segments"]
    assert segs[0]["start_s"] == 0 and segs[-1]["end_s"] == pytest.approx(90, abs=0.3)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segs, segs[1:]))
    lines = (tmp_path / "timeline.csv").read_text().splitlines()
    assert len(lines) == len(segs) + 1 and lines[0].startswith("start_s,end_s,image_id")
    page = check_html(tmp_path / "report.html")
    assert page.tags.count("img") >= 2 * len(segs)  # a frame and top-5 images per segment
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_viterbi_equals_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.random((5, 2))
        threshold, cost = float(rng.random()), float(rng.random() * 0.5)
        rewards = np.concatenate([scores, np.full((5, 1), threshold)], axis=1)

        def value(path):
            return sum(rewards[t, s] for t, s in enumerate(path)) - cost * sum(a != b for a, b in zip(path, path[1:]))

        best = max(value(p) for p in itertools.product(range(3), repeat=5))
        assert value(tuple(viterbi(scores, threshold, cost))) == pytest.approx(best)
    # No smoothing: each window's best state on its own.
    scores = rng.random((30, 4))
    expected = np.where(scores.max(1) > 0.5, scores.argmax(1), 4)
    assert (viterbi(scores, 0.5, 0.0) == expected).all()


@pytest.mark.parametrize("window, stride, batch", [(4, 1, 3), (4, 3, 5), (3, 2, 64), (20, 5, 4)])
def test_streamed_windows_equal_encode_videos(live, ckpts, window, stride, batch):
    """Window scores of the streaming pass == encode_videos on the window's frames, whatever the batching."""
    rec = Recognizer.load(ckpts["icl"], device="cpu", precision="fp32")
    done = score_livestream(rec, live["video"], live["shop"], fps=0.5, window=window, stride=stride,
                            batch_size=batch, progress=False)
    frames = torch.stack([rec.preprocess(image) for _, image in sample_frames(live["video"], 0.5)])
    n = len(frames)
    assert n == 45 and done.decode.sampled == n
    starts = window_starts(n, window, stride)
    assert (done.windows.starts == starts).all()
    shop = torch.from_numpy(rec.encode_images(done.shop.paths))
    with torch.no_grad():
        for row, s in enumerate(starts):
            clip = frames[s:s + window][None]
            emb, _, _ = rec.model.encode_videos(clip, torch.ones(clip.shape[:2], dtype=torch.bool))
            np.testing.assert_allclose(done.windows.scores[row], (emb @ shop.T)[0].numpy(), atol=2e-5)
    assert starts[-1] + min(window, n) == n  # the last frames are covered


def test_window_starts():
    assert window_starts(3, 4, 1).tolist() == [0]
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]


def test_flags_change_the_result(live, ckpts, tmp_path):
    base = _run(live, ckpts["icl"], tmp_path / "base")
    assert base["windows"] == 90 - 4 + 1 and base["decode"]["sampled_frames"] == 90
    _run(live, ckpts["icl"], tmp_path / "again")
    for name in ("timeline.json", "timeline.csv", "report.html"):  # two runs, the same bytes
        assert (tmp_path / "base" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    wide = _run(live, ckpts["icl"], tmp_path / "wide", "--window", "8", "--stride", "4", "--fps", "2")
    assert wide["decode"]["sampled_frames"] == 180 and wide["windows"] == len(window_starts(180, 8, 4))
    batched = _run(live, ckpts["icl"], tmp_path / "batched", "--batch_size", "7", "--device", "cpu")
    assert batched["segments"] == base["segments"]  # batching changes the speed only
    bf16 = _run(live, ckpts["icl"], tmp_path / "bf16", "--precision", "bf16")
    assert bf16["precision"] == "bf16" and base["precision"] == "fp32" and bf16["windows"] == base["windows"]
    none = _run(live, ckpts["icl"], tmp_path / "none", "--threshold", "2")
    assert [s["label"] for s in none["segments"]] == ["no product"]
    jumpy = _run(live, ckpts["icl"], tmp_path / "jumpy", "--switch_cost", "0", "--threshold", "-1")
    calm = _run(live, ckpts["icl"], tmp_path / "calm", "--switch_cost", "100", "--threshold", "-1")
    assert len(calm["segments"]) == 1 < len(jumpy["segments"])


def test_rerank_with_pmd(live, ckpts, tmp_path):
    plain = _run(live, ckpts["pmd"], tmp_path / "plain")
    done = _run(live, ckpts["pmd"], tmp_path / "pmd", "--rerank", "--rerank_topk", "3")
    assert done["rerank_topk"] == 3 and plain["rerank_topk"] is None
    assert done["windows"] == plain["windows"]

    # The oracle: PMD scores of one window's top 3, recomputed with the model.
    rec = Recognizer.load(ckpts["pmd"], device="cpu", precision="fp32")
    pass_plain = score_livestream(rec, live["video"], live["shop"], window=4, stride=1, progress=False)
    pass_pmd = score_livestream(rec, live["video"], live["shop"], window=4, stride=1, rerank_topk=3, progress=False)
    frames = torch.stack([rec.preprocess(image) for _, image in sample_frames(live["video"], 1.0)])
    shop_pix = torch.stack([rec.preprocess(p) for p in pass_plain.shop.paths])
    with torch.no_grad():
        _, image_tokens = rec.model.encode_images(shop_pix, return_tokens=True)
        for row in (0, 40):
            cos = pass_plain.windows.scores[row]
            top = np.argsort(-cos, kind="stable")[:3]
            clip = frames[row:row + 4][None]
            _, tokens, mask = rec.model.encode_videos(clip, torch.ones(1, 4, dtype=torch.bool), return_tokens=True)
            pmd = rec.model.score_pairs(image_tokens[top], tokens.expand(3, -1, -1), mask.expand(3, -1)).numpy()
            expected = cos.copy()
            expected[top[np.argsort(-pmd, kind="stable")]] = cos[top]
            np.testing.assert_allclose(pass_pmd.windows.scores[row], expected, atol=1e-5)
    with pytest.raises(SystemExit):
        _run(live, ckpts["icl"], tmp_path / "icl", "--rerank")


# ---------------------------------------------------------------- bad input
def _write_mp4(path: Path, n: int, fps: int = 4, pts=None, size: int = 64, time_base=None):
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_audio_only(path: Path):
    """A file declaring a video stream that holds no frame (only audio is written)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=4)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


def test_bad_videos(live, ckpts, tmp_path, expect_error, capsys):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    with expect_error(r"^error: --video .*notes.mp4: PyAV cannot open it"):
        _run({**live, "video": str(not_video)}, ckpts["icl"], tmp_path / "a")
    with expect_error(r"^error: --video .*missing.mp4: no such file"):
        _run({**live, "video": str(tmp_path / "missing.mp4")}, ckpts["icl"], tmp_path / "b")
    for name, message in (("audio.mp4", "the file has no video stream"), ("empty.mkv", "no decodable video frame")):
        _write_audio_only(tmp_path / name)  # mkv keeps the declared (empty) video stream, mp4 drops it
        with expect_error(rf"^error: --video .*{name}: {message}"):
            _run({**live, "video": str(tmp_path / name)}, ckpts["icl"], tmp_path / "c")
    # A corrupt stretch mid-stream: bytes overwritten in the middle of a real file -> skipped packets, counted.
    data = bytearray(Path(live["video"]).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = bytes((b * 7 + 13) % 256 for b in data[middle:middle + 3000])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    capsys.readouterr()
    done = _run({**live, "video": str(corrupt)}, ckpts["icl"], tmp_path / "d")
    assert done["decode"]["corrupt_packets"] >= 1
    assert "corrupt packets skipped" in capsys.readouterr().err
    assert done["segments"] and done["duration_s"] == pytest.approx(90, abs=0.5)


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    """Frames at irregular times: the sampled frames are the first at or after each 1-s grid point."""
    from fractions import Fraction

    pts = [0, 100, 1500, 1600, 1700, 4200, 4300, 7000, 7100, 7200]  # milliseconds
    path = tmp_path / "vfr.mp4"
    _write_mp4(path, len(pts), pts=pts, time_base=Fraction(1, 1000))
    stats = DecodeStats()
    times = [t for t, _ in sample_frames(path, 1.0, stats)]
    expected, next_t = [], 0.0  # the oracle: the rule written out on the known times
    for t in np.array(pts) / 1000:
        if t >= next_t:
            expected.append(t)
            next_t = np.floor(t) + 1
    assert times == pytest.approx(expected, abs=1e-3) and expected == [0.0, 1.5, 4.2, 7.0]
    assert stats.decoded == len(pts) and stats.sampled == 4
    assert len(set(np.round(stats.frame_intervals, 3))) > 1  # the file really has a variable rate


def test_bad_shops(live, ckpts, tmp_path, expect_error, capsys):
    with expect_error(r"^error: --shop .*: the folder is empty"):
        (tmp_path / "empty").mkdir()
        _run({**live, "shop": str(tmp_path / "empty")}, ckpts["icl"], tmp_path / "a")
    with expect_error(r"^error: --shop .*: not a folder"):
        _run({**live, "shop": live["video"]}, ckpts["icl"], tmp_path / "b")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("prices\n")
    (junk / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with expect_error(r"^error: --shop .*: no readable product image among its 2 files \(1 not images, 1 unreadable"):
        _run({**live, "shop": str(junk)}, ckpts["icl"], tmp_path / "c")
    # A real shop plus junk and a duplicate: junk skipped and counted, the duplicate reported, one copy kept.
    shop = tmp_path / "shop"
    shutil.copytree(live["shop"], shop)
    first = sorted(shop.iterdir())[0]
    shutil.copy(first, shop / "zz-copy.jpg")
    shutil.copy(junk / "notes.txt", shop)
    shutil.copy(junk / "broken.jpg", shop)
    capsys.readouterr()
    done = _run({**live, "shop": str(shop)}, ckpts["icl"], tmp_path / "d")
    err = capsys.readouterr().err
    assert done["shop"]["products"] == 6
    assert done["shop"]["duplicates"] == {str(shop / "zz-copy.jpg"): str(first)}
    assert [Path(p).name for p in done["shop"]["not_images"]] == ["notes.txt"]
    assert [Path(p).name for p in done["shop"]["unreadable"]] == ["broken.jpg"]
    assert "duplicate images" in err and "not images" in err and "unreadable images" in err


def test_bad_flags(live, ckpts, tmp_path, expect_error):
    with expect_error("--stride 5 > --window 4"):
        _run(live, ckpts["icl"], tmp_path, "--stride", "5")
    with expect_error("--fps must be > 0"):
        _run(live, ckpts["icl"], tmp_path, "--fps", "0")
    with expect_error("--rerank_topk has an effect only with --rerank"):
        _run(live, ckpts["pmd"], tmp_path, "--rerank_topk", "3")
    with expect_error("--rerank needs a checkpoint with a PMD head"):
        _run(live, ckpts["icl"], tmp_path, "--rerank")
    with expect_error("--precision fp16 needs a GPU"):
        _run(live, ckpts["icl"], tmp_path, "--precision", "fp16", "--device", "cpu")
    if not torch.cuda.is_available():
        with expect_error("--device cuda, but no GPU is visible"):
            _run(live, ckpts["icl"], tmp_path, "--device", "cuda")


def test_help_imports_no_torch():
    code = ("import runpy, sys\nsys.argv = ['recognize_livestream.py', '--help']\n"
            "try:\n    runpy.run_path('recognize_livestream.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'torchvision', 'av') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--switch_cost" in done.stdout and "HEAVY []" in done.stdout, done.stdout[-500:]


def test_scoring_by_hand():
    truth = [{"start_s": 0, "end_s": 10, "image_id": "a"}, {"start_s": 10, "end_s": 20, "image_id": None},
             {"start_s": 20, "end_s": 30, "image_id": "b"}]
    pred = [{"start_s": 0, "end_s": 12, "image_id": "a"}, {"start_s": 12, "end_s": 26, "image_id": "b"},
            {"start_s": 26, "end_s": 30, "image_id": "a"}]
    # Seconds 0.5..29.5: right on 0-9 (10), none of 10-19 (pred a at 10, 11; b at 12-19), b on 20-25 (6).
    result = score({"segments": truth, "duration_s": 30, "products": ["a", "b"]}, pred)
    assert result["accuracy"] == pytest.approx(100 * 16 / 30)
    # IoU(a) = 10/12 -> hit; IoU(b) = 6/16 < 0.5 -> miss; the second "a" overlaps nothing true of its label.
    f1 = segment_f1(truth, pred)
    assert (f1["precision"], f1["recall"]) == pytest.approx((1 / 3, 1 / 2))
    assert result["chance_accuracy_uniform"] == pytest.approx(100 / 3)


# ---------------------------------------------------------------- API and the evaluation's --report
def test_api_equals_eval_cli_and_report(small_data, ckpts, tmp_path):
    """encode_images / encode_video == the features lpr4m_embedding_eval.py writes (a subprocess)."""
    from dataloaders.lpr4m import load_lpr4m_test

    data = str(small_data / "lpr4m")
    out = tmp_path / "eval"
    cmd = [sys.executable, str(ROOT / "lpr4m_embedding_eval.py"), "--data_root", data, "--ckpt_path", ckpts["icl"],
           "--output_dir", str(out), "--num_workers", "0", "--no_progress", "--row", "icl", "--save_features",
           "--report", "--report_queries", "3"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    feats = np.load(out / "features.npz")
    split = load_lpr4m_test(data)
    rec = Recognizer.load(ckpts["icl"], device="cpu", precision="fp32")
    np.testing.assert_allclose(rec.encode_images([g.path for g in split.gallery], batch_size=5),
                               feats["gallery_features"], atol=1e-5)
    for q in (0, len(split.queries) - 1):
        folder = Path(split.queries[q].frame_paths[0]).parent
        assert sorted(str(p) for p in folder.iterdir()) == sorted(split.queries[q].frame_paths)
        np.testing.assert_allclose(rec.encode_video(folder), feats["query_features"][q], atol=1e-5)
    # rank(): the gallery of one livestream, best first, cosines as the evaluation computes them.
    shop = tmp_path / "shop"
    shop.mkdir()
    group = split.queries[0].group
    for g in split.gallery:
        if g.group == group:
            shutil.copy(g.path, shop / f"{g.image_id}.jpg")
    ranked = rec.rank(Path(split.queries[0].frame_paths[0]).parent, shop)
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert [n for n, _ in ranked[:3]] == [e["image_id"] for e in rankings[0]["ranking"][:3]]
    assert [s for _, s in ranked[:3]] == pytest.approx([e["score"] for e in rankings[0]["ranking"][:3]], abs=1e-5)
    # The report: valid, self-contained, 3 worst + 3 random queries, ground truth marked.
    page = check_html(out / "report.html")
    text = (out / "report.html").read_text()
    assert text.count('class="card"') == 6 and "✓ GT" in text and "Worst queries" in text
    assert page.tags.count("img") > 6 * 10


def test_movingfashion_report(small_data, ckpts, tmp_path):
    import movingfashion_eval

    out = tmp_path / "mf"
    movingfashion_eval.main(["--data_root", str(small_data / "movingfashion"), "--ckpt_path", ckpts["icl"],
                             "--output_dir", str(out), "--num_workers", "0", "--no_progress", "--row", "icl",
                             "--report", "--report_queries", "2"])
    check_html(out / "report.html")
    text = (out / "report.html").read_text()
    assert text.count('class="card"') == 4 and text.count("✓ GT") >= 1


def test_encode_images_accepts_pil_and_rejects_bad_files(ckpts, tmp_path):
    from utils.errors import DataError

    rec = Recognizer.load(ckpts["icl"], device="cpu", precision="fp32")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    np.testing.assert_allclose(rec.encode_images([img]), rec.encode_images([tmp_path / "a.png"]), atol=1e-6)
    assert np.linalg.norm(rec.encode_video([img, img]), axis=-1) == pytest.approx(1.0, abs=1e-5)
    # A video file: frames sampled at fps, then chosen by the evaluation rule, pooled as encode_videos does.
    clip = tmp_path / "clip.mp4"
    _write_mp4(clip, 24, fps=4)  # 6 s -> 12 frames at 2 fps -> eval rule picks 10 of them
    frames = torch.stack([rec.preprocess(image) for _, image in sample_frames(clip, 2.0)])
    assert len(frames) == 12
    chosen = frames[[0, 1, 2, 3, 4, 6, 7, 8, 9, 10]][None]
    with torch.no_grad():
        expected, _, _ = rec.model.encode_videos(chosen, torch.ones(1, 10, dtype=torch.bool))
    np.testing.assert_allclose(rec.encode_video(clip, fps=2.0), expected[0].numpy(), atol=1e-5)
    # decode="draft" (--fast_decode): JPEG draft mode for large images (not the exact pixels), whole decoding otherwise.
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    big.save(tmp_path / "big.jpg", quality=90)
    fast = Recognizer.load(ckpts["icl"], device="cpu", precision="fp32", decode="draft")
    assert not torch.equal(fast.preprocess(tmp_path / "big.jpg"), rec.preprocess(tmp_path / "big.jpg"))
    assert torch.equal(fast.preprocess(tmp_path / "a.png"), rec.preprocess(tmp_path / "a.png"))
    # decode="tv": torchvision's decoder and uint8 resize, within one grey level of exact.
    tv = Recognizer.load(ckpts["icl"], device="cpu", precision="fp32", decode="tv")
    diff = (tv.preprocess(tmp_path / "big.jpg").int() - rec.preprocess(tmp_path / "big.jpg").int()).abs()
    assert tv.transform.decode == "tv" and diff.max() <= 1
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="b.jpg: cannot read this image"):
        rec.encode_images([tmp_path / "b.jpg"])


# ---------------------------------------------------------------- the tools around it
def test_generator_tool_and_sweep(ckpts, tmp_path):
    from tools import make_synthetic_livestream, sweep_timeline

    paths = make_synthetic_livestream.main(["--output_dir", str(tmp_path), "--minutes", "0.5", "--products", "3",
                                            "--fps", "2", "--width", "48", "--height", "32", "--segment_s", "4", "6",
                                            "--style", "card", "--categories", "3", "--image_size", "32"])
    schedule = json.loads(Path(paths["schedule"]).read_text())
    assert schedule["duration_s"] == 30 and schedule["style"] == "card" and len(schedule["products"]) == 3
    assert all(4 <= s["end_s"] - s["start_s"] <= 6 + 2 for s in schedule["segments"])
    with av.open(paths["video"]) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (48, 32, 2)
    rows = sweep_timeline.main(["--data", str(tmp_path), "--ckpt", ckpts["icl"], "--windows", "1", "3",
                                "--thresholds", "0.5", "--switch_costs", "0", "10"])
    assert [(r["window"], r["switch_cost"]) for r in rows] == [(1, 0.0), (1, 10.0), (3, 0.0), (3, 10.0)]


def test_demo_livestream_script_reuses_the_model(trained, tmp_path):
    """scripts/demo_livestream.sh with a model already in place: generate, recognise, score beside chance."""
    model = tmp_path / "runs" / "ICL" / "model.pt"
    model.parent.mkdir(parents=True)
    shutil.copy(trained, model)
    env = {"PATH": "/usr/bin:/bin", "RICE_VENV": str(Path(sys.executable).parent.parent), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo_livestream.sh"), "--minutes", "1", "--output_dir",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reusing the demo model" in done.stdout and "per-second accuracy" in done.stdout
    assert (tmp_path / "livestream" / "out" / "report.html").is_file()
    last = dict(kv.split("=") for kv in done.stdout.splitlines()[-2].split())
    assert float(last["chance_accuracy_uniform"]) == pytest.approx(100 / 7, abs=0.01)


def test_screenshot_tool_without_a_browser(tmp_path):
    """tools/screenshot_report.sh says what to install when no Chromium is on PATH (with one it renders; slow)."""
    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html><html><body>x</body></html>")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "realpath", "sed", "test", "dirname"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = subprocess.run(["bash", str(ROOT / "tools" / "screenshot_report.sh"), str(page), str(tmp_path / "x.png")],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "install it (apt-get install chromium)" in done.stderr, done.stderr
