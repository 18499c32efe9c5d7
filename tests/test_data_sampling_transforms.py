"""Frame sampling rules, padding and the v1 / v2 transforms against independent oracles."""
import numpy as np
import pytest
import torch
from PIL import Image

from dataloaders.sampling import eval_frame_indices, pad_frames, train_frame_indices
from dataloaders.transforms import build_transform, load_rgb
from modules.clip_vit import normalize_pixels
from modules.config import CLIP_MEAN, CLIP_STD


def test_eval_rule_differs_from_train_rule_for_12_frames():
    assert eval_frame_indices(12, 10) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert eval_frame_indices(25, 10) == [0, 2, 5, 7, 10, 12, 15, 17, 20, 22]
    assert eval_frame_indices(4, 10) == [0, 1, 2, 3]
    full = set()
    for seed in range(200):   # the untouched (no tail drop) draws give the full uniform rule
        idx = train_frame_indices(12, 10, np.random.default_rng(seed))
        if len(idx) == 10:
            full.add(tuple(idx))
    assert full == {(0, 1, 2, 3, 4, 6, 7, 8, 9, 11)}


def test_train_tail_drop_keeps_a_prefix_of_at_least_one_frame():
    lengths = []
    for seed in range(400):
        idx = train_frame_indices(30, 10, np.random.default_rng(seed))
        base = [int(x) for x in np.floor(np.linspace(0, 29, 10))]
        assert 1 <= len(idx) <= 10 and idx == base[:len(idx)]
        lengths.append(len(idx))
    lengths = np.array(lengths)
    # p = 0 or no drop keeps 10; otherwise keep 10 - p*10 for p in 0.1..0.9: every length 1..10 occurs
    assert set(lengths.tolist()) == set(range(1, 11))
    assert 0.45 < (lengths == 10).mean() < 0.65      # 0.5 (no drop) + 0.5 * 0.1 (p = 0)
    assert train_frame_indices(1, 10, np.random.default_rng(0)) == [0]


def test_pad_frames_mask():
    frames = [torch.full((3, 4, 4), float(i + 1)) for i in range(3)]
    out, mask = pad_frames(frames, 5, (3, 4, 4))
    assert out.shape == (5, 3, 4, 4) and mask.tolist() == [True, True, True, False, False]
    assert out[2].eq(3).all() and out[3:].eq(0).all()


def _oracle(img, resize, resample, crop):
    """The releases' pipeline written out: resize, centre crop, /255, CLIP mean/std (float32)."""
    img = img.resize((resize, resize), resample)
    off = (resize - crop) // 2
    arr = np.asarray(img, dtype=np.float32)[off:off + crop, off:off + crop] / 255.0
    mean, std = np.float32(CLIP_MEAN), np.float32(CLIP_STD)
    return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).astype(np.float32))


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8))


def test_v1_squashes_to_square_bicubic(photo):
    out = build_transform("v1", train=False, image_size=64)(photo)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8  # the model normalises
    assert torch.equal(normalize_pixels(out), _oracle(photo, 64, Image.BICUBIC, 64))  # bit for bit
    torch.testing.assert_close(build_transform("v1", train=True, image_size=64)(photo), out)


def test_v2_eval_resizes_to_73_then_centre_crops_64(photo):
    t = build_transform("v2", train=False, image_size=64)
    assert t.resize_size == 73 and build_transform("v2", False, 224).resize_size == 256
    assert torch.equal(normalize_pixels(t(photo)), _oracle(photo, 73, Image.BILINEAR, 64))


def test_v2_train_crop_and_flip_follow_the_rng(photo):
    t = build_transform("v2", train=True, image_size=64)
    a = t(photo, np.random.default_rng(1))
    assert torch.equal(a, t(photo, np.random.default_rng(1)))
    outs = {t(photo, np.random.default_rng(s)).sum().item() for s in range(6)}
    assert len(outs) > 1
    with pytest.raises(ValueError, match="rng"):
        t(photo)
    with pytest.raises(ValueError, match="style"):
        build_transform("v3", False, 64)


def test_jpeg_draft_mode_decodes_large_files_at_reduced_scale(tmp_path, photo):
    path = tmp_path / "big.jpg"
    photo.resize((800, 600)).save(path)
    assert load_rgb(str(path)).size == (800, 600)
    small = load_rgb(str(path), decode_size=64)
    assert small.size == (100, 75)               # 1/8 scale, both sides still >= 64
    assert load_rgb(str(path), decode_size=400).size == (800, 600)  # not 2x larger: full decode


def test_datasets_decode_whole_images_unless_fast_decode(tmp_path, photo):
    """Exact by default: what a dataset feeds the model equals the transform of the fully decoded file."""
    from PIL import Image

    from dataloaders.datasets import ImageDataset
    from dataloaders.records import GalleryImage

    path = tmp_path / "big.jpg"
    photo.resize((1280, 720)).save(path, quality=90)
    with Image.open(path) as img:
        whole = img.convert("RGB")  # the releases' decode: every pixel
    for style in ("v1", "v2"):
        exact = build_transform(style, train=False, image_size=64)
        item = ImageDataset([GalleryImage("x", str(path), "")], exact)[0]
        assert item["ok"] and torch.equal(item["image"], exact(whole))
        fast = build_transform(style, train=False, image_size=64, fast_decode=True)
        fast_item = ImageDataset([GalleryImage("x", str(path), "")], fast)[0]
        assert not torch.equal(fast_item["image"], item["image"])  # draft mode: other pixels


def test_the_model_normalises_uint8_pixels_exactly_as_the_float_pipeline(photo):
    from modules.config import VISION_CONFIGS, RICEConfig
    from modules.rice import RICEModel

    torch.manual_seed(0)
    model = RICEModel(RICEConfig(VISION_CONFIGS["tiny"])).eval()
    t = build_transform("v1", train=False, image_size=64)
    pixels = torch.stack([t(photo), t(photo.transpose(Image.FLIP_LEFT_RIGHT))])
    floats = torch.stack([_oracle(photo, 64, Image.BICUBIC, 64),
                          _oracle(photo.transpose(Image.FLIP_LEFT_RIGHT), 64, Image.BICUBIC, 64)])
    with torch.no_grad():
        assert torch.equal(model.encode_images(pixels)[0], model.encode_images(floats)[0])
        mask = torch.tensor([[True, False]])
        video_u8 = model.encode_videos(pixels[None], mask)[0]
        assert torch.equal(video_u8, model.encode_videos(floats[None], mask)[0])
