"""Recipe v2_release: the v2 heads, losses, initialisation, optimizer and schedule against formulas
written out here, and a v2-format checkpoint (`rice_final.pth`, the v2 code's names) that loads,
scores and re-ranks.
"""

import json
import math
from argparse import Namespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lpr4m_embedding_eval
from dataloaders.sampling import train_frame_indices
from modules.checkpoint import load_checkpoint
from modules.clip_vit import normalize_pixels
from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from modules.rice_v2 import RICEv2Model
from tests.recipe_grad_worker import run_two_processes
from utils.train.adamw_v2 import AdamWv2
from utils.train.recipes import build_optimizer, init_heads
from utils.train.scheduler import v2_lr_factor

HEADS = 8


def _model(pfr=True, seed=0):
    torch.manual_seed(seed)
    config = RICEConfig(vision=VISION_CONFIGS["tiny"], sim_header="cross_attention", recons_feat=pfr,
                        head_style="v2", video_pooling="v2")
    model = RICEv2Model(config)
    init_heads(model, "v2_release")
    return model


def _batch(b=4, t=2):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, 3, 64, 64), generator=g, dtype=torch.uint8)
    frames = torch.randint(0, 256, (b, t, 3, 64, 64), generator=g, dtype=torch.uint8)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 1] = False
    return images, frames, mask


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _attention(q_in, kv_in, w, b, heads, key_valid):
    """Multi-head attention written out: returns (merged values [N, E], probabilities [H, N, M])."""
    e = q_in.shape[-1]
    dh = e // heads
    q = (q_in @ w[:e].T + b[:e]).view(-1, heads, dh).transpose(0, 1) * dh**-0.5
    k = (kv_in @ w[e:2 * e].T + b[e:2 * e]).view(-1, heads, dh).transpose(0, 1)
    v = (kv_in @ w[2 * e:].T + b[2 * e:]).view(-1, heads, dh).transpose(0, 1)
    s = q @ k.transpose(1, 2)
    s = torch.where(key_valid[None, None, :], s, torch.tensor(-1e30))
    p = torch.softmax(s, dim=-1)
    return (p @ v).transpose(0, 1).reshape(-1, e), p


def _decode(sd, image_tokens, video_tokens, video_valid):
    """v2's decoder for ONE pair from the state dict `sd` (our names): (pooled [E], cross maps [H, N, M])."""
    def mlp(x, pre):
        h = x @ sd[pre + "c_fc.weight"].T + sd[pre + "c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        return h @ sd[pre + "c_proj.weight"].T + sd[pre + "c_proj.bias"]

    x, e = image_tokens, image_tokens.shape[-1]
    s0, s1 = "decoder.layers.0.", "decoder.layers.1."
    # self block: pre-LN (eps 1e-12), every image token valid
    h = _layer_norm(x, sd[s0 + "ln_1.weight"], sd[s0 + "ln_1.bias"], 1e-12)
    att, _ = _attention(h, h, sd[s0 + "attn.in_proj_weight"], sd[s0 + "attn.in_proj_bias"], HEADS,
                        torch.ones(len(x), dtype=torch.bool))
    x = x + att @ sd[s0 + "attn.out_proj.weight"].T + sd[s0 + "attn.out_proj.bias"]
    x = x + mlp(_layer_norm(x, sd[s0 + "ln_2.weight"], sd[s0 + "ln_2.bias"], 1e-12), s0 + "mlp.")
    # cross block: only the queries are normalised (eps 1e-5)
    h = _layer_norm(x, sd[s1 + "ln_1.weight"], sd[s1 + "ln_1.bias"], 1e-5)
    att, probs = _attention(h, video_tokens, sd[s1 + "attn.in_proj_weight"], sd[s1 + "attn.in_proj_bias"], HEADS,
                            video_valid)
    x = x + att @ sd[s1 + "attn.out_proj.weight"].T + sd[s1 + "attn.out_proj.bias"]
    x = x + mlp(_layer_norm(x, sd[s1 + "ln_2.weight"], sd[s1 + "ln_2.bias"], 1e-5), s1 + "mlp.")
    pooled = _layer_norm(x, sd["decoder.pooler.layer_norm.weight"], sd["decoder.pooler.layer_norm.bias"], 1e-5)[0]
    pooled = torch.relu(pooled @ sd["decoder.pooler.dense.weight"].T)
    return pooled, probs * math.sqrt(e // HEADS)


def _score(sd, pooled):
    w = sd["vim.weight"][0]
    return 10.0 * (pooled @ w) / (pooled.norm() * w.norm())


@torch.no_grad()
def test_v2_losses_on_a_fixed_batch_equal_the_formulas():
    model = _model().double().eval()  # eval: no dropout; fp64: exact comparison
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # not 4: the scale must enter squared
        for conv in (model.rec[0], model.rec[2]):  # v2 starts at 1/0; random values test the formula
            conv.weight.copy_(torch.rand_like(conv.weight))
            conv.bias.copy_(torch.rand_like(conv.bias) * 0.1)
    images, frames, mask = _batch(b=6)  # 6 videos: the 3 hardest negatives are a real choice
    features = model.encode_pairs(normalize_pixels(images).double(), normalize_pixels(frames).double(), mask)
    losses = model.pair_losses(features)
    sd = {k: v.double() for k, v in model.state_dict().items()}

    img, vid = features["image_emb"], features["video_emb"]
    b = len(img)
    target = torch.arange(b)
    icl = 0.5 * (F.cross_entropy(9.0 * img @ vid.T, target) + F.cross_entropy(9.0 * vid @ img.T, target))
    torch.testing.assert_close(losses["icl"], icl)

    tokens, vtokens, valid = features["image_tokens"], features["video_tokens"], features["token_mask"]
    sim = img @ vid.T
    pmd, rec = 0.0, 0.0
    for i in range(b):
        others = [j for j in sim[i].argsort(descending=True).tolist() if j != i][:3]
        scores = torch.stack([_score(sd, _decode(sd, tokens[i], vtokens[j], valid[j])[0]) for j in [i, *others]])
        pmd = pmd - torch.log_softmax(scores, 0)[0] / b
        _, maps = _decode(sd, tokens[i], vtokens[i], valid[i])  # [H, N, M]
        hidden = torch.relu(torch.einsum("oc,cnm->onm", sd["rec.0.weight"][:, :, 0, 0], maps)
                            + sd["rec.0.bias"][:, None, None])
        w = torch.relu(torch.einsum("oc,cnm->onm", sd["rec.2.weight"][:, :, 0, 0], hidden)
                       + sd["rec.2.bias"][:, None, None])[0]
        recon = torch.softmax(w, dim=-1) @ (vtokens[i] * valid[i][:, None])
        rec = rec + ((recon - tokens[i]) ** 2).mean() / b
    torch.testing.assert_close(losses["pmd"], pmd)
    torch.testing.assert_close(losses["pfr"], rec)
    torch.testing.assert_close(losses["loss"], icl + pmd + rec)  # unweighted


def test_v2_initialisation():
    model = _model(seed=2)
    blocks = model.visual.transformer.resblocks
    for layer, block in zip(model.decoder.layers, list(blocks)[-2:]):  # the LAST two encoder blocks
        for k, v in block.state_dict().items():
            assert torch.equal(layer.state_dict()[k], v), k
    assert model.decoder.pooler.dense.bias is None and model.vim.bias is None
    assert abs(model.decoder.pooler.dense.weight.std().item() - 0.02) < 0.003
    assert all(torch.all(c.weight == 1) and torch.all(c.bias == 0) for c in (model.rec[0], model.rec[2]))
    assert model.rec[0].in_channels == HEADS and model.logit_scale.item() == 4.0


def test_adamw_v2_update_written_out():
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, generator=g))
    b1, b2, eps, wd, lr = 0.9, 0.999, 1e-6, 0.2, 0.05
    opt = AdamWv2([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    ref, m, v = p.detach().clone(), torch.zeros(6), torch.zeros(6)
    for t in (1, 2, 3):
        grad = torch.randn(6, generator=g) * 1e-3
        p.grad = grad.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
        ref = ref - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
        ref = ref - lr * wd * ref  # decay after the update
        torch.testing.assert_close(p.detach(), ref, rtol=1e-6, atol=1e-7)


def test_v2_groups_betas_and_schedule():
    model = _model()
    for dataset, betas in (("lpr4m", (0.9, 0.999)), ("movingfashion", (0.9, 0.98))):
        opt = build_optimizer(model, Namespace(recipe="v2_release", lr=1e-4, coef_lr=1e-2, weight_decay=0.2,
                                               dataset=dataset))
        assert isinstance(opt, AdamWv2) and opt.defaults["betas"] == betas
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            slow = name.startswith("visual.") or name == "logit_scale"
            assert group["lr"] == pytest.approx(1e-6 if slow else 1e-4), name
            assert group["weight_decay"] == (0.0 if "bias" in name else 0.2), name
    assert v2_lr_factor(0, 5000, 500) == 0.0 and v2_lr_factor(250, 5000, 500) == 0.5
    assert v2_lr_factor(500, 5000, 500) == 1.0
    assert v2_lr_factor(2750, 5000, 500) == pytest.approx(0.5)


def _v2_release_file(model: RICEv2Model, path):
    """A `rice_final.pth` as the v2 code writes it (MMF, DDP prefix), from the v2 code's parameter names."""
    sd = model.state_dict()
    out = {f"module.image_encoder.model.{k.removeprefix('visual.')}": v for k, v in sd.items()
           if k.startswith("visual.")}
    rename = {"decoder.layers.": "module.transformer.transformer.transformer.layers.",
              "decoder.pooler.": "module.transformer.transformer.pooler.", "vim.": "module.transformer.heads.vim.",
              "rec.": "module.transformer.heads.rec.", "logit_scale": "module.transformer.logit_scale"}
    for k, v in sd.items():
        for ours, theirs in rename.items():
            if k.startswith(ours):
                out[theirs + k.removeprefix(ours)] = v
    width = model.config.vision.width
    # the decoder's embedding module, which v2's forward never used
    out["module.transformer.transformer.embeddings.class_embedding"] = torch.randn(width)
    out["module.transformer.transformer.embeddings.position_embedding.weight"] = torch.randn(17, width)
    out["module.transformer.transformer.embeddings.layer_norm.weight"] = torch.ones(width)
    out["module.transformer.transformer.embeddings.layer_norm.bias"] = torch.zeros(width)
    torch.save({"model": out}, path)


@torch.no_grad()
def test_v2_checkpoint_loads_scores_and_reranks(tmp_path, small_data):
    source = _model(seed=5).eval()
    with torch.no_grad():
        source.logit_scale.fill_(5.5)
    path = tmp_path / "rice_final.pth"
    _v2_release_file(source, path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "rice_v2" and ckpt.heads.head_style == "v2"
    assert (ckpt.heads.sim_header, ckpt.heads.cross_num_hidden_layers, ckpt.heads.recons_feat,
            ckpt.heads.pmd_heads) == ("cross_attention", 2, True, HEADS)
    model = RICEModel.from_checkpoint(ckpt, {"recons_feat": False}).eval()
    assert isinstance(model, RICEv2Model) and model.config.video_pooling == "v2"
    assert model.logit_scale.item() == 5.5
    images, frames, mask = _batch()
    _, image_tokens = model.encode_images(images, return_tokens=True)
    _, video_tokens, video_mask = model.encode_videos(frames, mask, return_tokens=True)
    index = torch.tensor([1, 0, 3, 2])
    scores = model.score_pairs(image_tokens, video_tokens, video_mask, index)
    sd = source.state_dict()
    for i, j in enumerate(index.tolist()):
        expected = _score(sd, _decode(sd, image_tokens[i], video_tokens[j], video_mask[j])[0])
        torch.testing.assert_close(scores[i], expected, rtol=1e-5, atol=1e-5)
    # the evaluation re-ranks with it (ICL+PMD row flags)
    lpr4m_embedding_eval.main([
        "--data_root", str(small_data / "lpr4m"), "--ckpt_path", str(path), "--output_dir", str(tmp_path / "eval"),
        "--n_gpu", "1", "--num_workers", "0", "--no_progress", "--sim_header", "cross_attention",
        "--cross_num_hidden_layers", "2"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["checkpoint_format"] == "rice_v2"
    assert any("rerank" in k or "reranked" in k for k in saved), sorted(saved)


def test_v2_tail_cut_only_for_full_clips():

    lengths = {n: set() for n in (3, 10, 25)}
    for seed in range(200):
        for n in lengths:
            lengths[n].add(len(train_frame_indices(n, 10, np.random.default_rng(seed), full_only=True)))
    assert lengths[3] == {3}  # fewer frames than max_frames: never cut under v2's rule
    assert lengths[10] == lengths[25] == set(range(1, 11))  # 10 sampled: cut to 10 - floor(10·p), p = 0 .. 0.9
    v1 = {len(train_frame_indices(3, 10, np.random.default_rng(seed))) for seed in range(200)}
    assert v1 == {1, 2, 3}  # v1's rule cuts short clips too


def test_two_process_step_equals_one_process_step(tmp_path):
    """v2 gathers with summed gradients, as this project: 2 torchrun processes (gloo, fp64) give the
    1-process gradients of the whole batch, hard negatives and the learnable ICL scale included."""
    model = _model().double().eval()
    images, frames, mask = _batch(b=6)
    images, frames = normalize_pixels(images).double(), normalize_pixels(frames).double()
    two = run_two_processes(tmp_path, {"config": model.config.to_dict(), "state": model.state_dict(),
                                       "images": images, "frames": frames, "frame_mask": mask}, "v2_release")
    model(images, frames, mask)["loss"].backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(two[name], p.grad, rtol=1e-7, atol=1e-9, msg=name)
