"""RICEModel: embeddings, padding invariance, loss composition, PFR gradient path, checkpoint loading."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from modules.checkpoint import HeadsConfig, LoadedCheckpoint
from modules.config import VISION_CONFIGS
from modules.losses import contrastive_loss
from modules.rice import RICEConfig, RICEModel

TINY = VISION_CONFIGS["tiny"]  # 64 px, 16 px patches: 17 tokens, embed 64


def _model(**kw) -> RICEModel:
    torch.manual_seed(0)
    defaults = dict(vision=TINY, sim_header="cross_attention", recons_feat=True, pmd_chunk_size=5)
    return RICEModel(RICEConfig(**{**defaults, **kw})).eval()  # eval: PMD dropout off


def _batch(b=4, t=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 64, 64, generator=g)
    frames = torch.randn(b, t, 3, 64, 64, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 1:] = False
    mask[2, 2:] = False
    return images, frames, mask


def test_config_round_trip_and_validation():
    config = RICEConfig(vision=TINY, sim_header="cross_attention", recons_feat=True, video_pooling="v2")
    assert RICEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="recons_feat"):
        RICEConfig(vision=TINY, recons_feat=True)
    with pytest.raises(ValueError, match="sim_header"):
        RICEConfig(vision=TINY, sim_header="seq_transformer")
    with pytest.raises(ValueError, match="unknown RICEConfig keys"):
        RICEConfig.from_dict({**config.to_dict(), "lr": 1.0})


@pytest.mark.parametrize("pooling", ["v1", "v2"])
def test_video_embedding_rules(pooling):
    model = _model(video_pooling=pooling, sim_header="mean_pooling", recons_feat=False)
    _, frames, mask = _batch()
    with torch.no_grad():
        emb, _, _ = model.encode_videos(frames, mask)
        for i in range(frames.shape[0]):
            per_frame, _ = model.visual(frames[i][mask[i]])  # [t_i, E] unnormalised
            if pooling == "v1":
                per_frame = F.normalize(per_frame, dim=-1)
            torch.testing.assert_close(emb[i], F.normalize(per_frame.mean(0), dim=0), atol=1e-6, rtol=1e-5)


def test_video_tokens_are_frames_concatenated_with_padding_masked():
    model = _model()
    _, frames, mask = _batch()
    with torch.no_grad():
        _, tokens, token_mask = model.encode_videos(frames, mask, return_tokens=True)
        _, frame_tokens = model.visual(frames[0], return_tokens=True)  # video 0 has all 3 frames
    n = TINY.num_tokens
    assert tokens.shape == (4, 3 * n, TINY.embed_dim) and token_mask.shape == (4, 3 * n)
    torch.testing.assert_close(tokens[0], frame_tokens.reshape(3 * n, -1), atol=1e-5, rtol=1e-5)
    assert token_mask[1].tolist() == [True] * n + [False] * 2 * n
    assert tokens[1, n:].abs().max() == 0


def test_padded_pixels_change_nothing():
    model = _model()
    images, frames, mask = _batch()
    noisy = frames.clone()
    noisy[~mask] = 100 * torch.randn_like(noisy[~mask])
    outputs = []
    for f in (frames, noisy):
        model.zero_grad()
        losses = model(images, f, mask)
        losses["loss"].backward()
        emb, tokens, _ = model.encode_videos(f, mask, return_tokens=True)
        grads = [p.grad.clone() for p in model.parameters()]
        outputs.append(({k: v.detach() for k, v in losses.items()}, emb.detach(), tokens.detach(), grads))
    (l0, e0, t0, g0), (l1, e1, t1, g1) = outputs
    assert l0 == l1 or all(torch.equal(l0[k], l1[k]) for k in l0)
    assert torch.equal(e0, e1) and torch.equal(t0, t1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_forward_matches_oracle_losses():
    """ICL from the eval API, PMD by explicit hard-negative choice and score_pairs, PFR by hand."""
    model = _model(pmd_chunk_size=3)
    images, frames, mask = _batch()
    with torch.no_grad():
        losses = model(images, frames, mask)
        img, img_tok = model.encode_images(images, return_tokens=True)
        vid, vid_tok, tok_mask = model.encode_videos(frames, mask, return_tokens=True)
    assert set(losses) == {"loss", "icl", "pmd", "pfr"}
    torch.testing.assert_close(losses["icl"], contrastive_loss(img, vid, img, vid, 0, 100.0), atol=1e-5, rtol=1e-5)

    sim = (img @ vid.T).tolist()
    pmd, pfr, n, e = 0.0, 0.0, TINY.num_tokens, TINY.embed_dim
    for i in range(4):
        negatives = sorted((j for j in range(4) if j != i), key=lambda j: -sim[i][j])[:3]
        cand = [i] + negatives
        with torch.no_grad():
            scores = model.score_pairs(img_tok[[i] * 4], vid_tok[cand], tok_mask[cand])
            _, attention = model.cross(img_tok[[i]], vid_tok[[i]], tok_mask[[i]])
        logits = (100 * scores).tolist()
        pmd += math.log(sum(math.exp(z - max(logits)) for z in logits)) + max(logits) - logits[0]
        # PFR for the positive pair: drop CLS rows/columns, 1x1 convs, reconstruct patches.
        a = attention[0, :, 1:].reshape(model.config.pmd_heads, n - 1, 3, n)[..., 1:].reshape(
            model.config.pmd_heads, n - 1, -1)
        with torch.no_grad():
            w = model.recons_weights(a[None])[0]
        video_patches = vid_tok[i].view(3, n, e)[:, 1:].reshape(-1, e)
        pfr += ((w @ video_patches - img_tok[i, 1:]) ** 2).mean().item()
    assert abs(losses["pmd"].item() - pmd / 4) < 1e-3
    assert abs(losses["pfr"].item() - pfr / 4) < 1e-5
    total = losses["icl"] + losses["pmd"] + 0.05 * losses["pfr"]
    torch.testing.assert_close(losses["loss"], total)


def test_loss_weights_are_used():
    images, frames, mask = _batch()
    with torch.no_grad():
        losses = _model(pmd_weight=0.5, pfr_weight=2.0)(images, frames, mask)
    torch.testing.assert_close(losses["loss"], losses["icl"] + 0.5 * losses["pmd"] + 2.0 * losses["pfr"])


def test_mean_pooling_model_has_only_icl():
    model = _model(sim_header="mean_pooling", recons_feat=False)
    assert model.cross is None and model.similarity_dense is None and model.recons_weights is None
    losses = model(*_batch())
    assert set(losses) == {"loss", "icl"}
    torch.testing.assert_close(losses["loss"], losses["icl"])


def test_chunking_and_grad_checkpointing_do_not_change_the_step():
    images, frames, mask = _batch()
    results = []
    for chunk, ckpt in ((16, False), (3, False), (5, True)):
        model = _model(pmd_chunk_size=chunk)
        model.set_grad_checkpointing(ckpt)
        losses = model(images, frames, mask)
        losses["loss"].backward()
        results.append((losses["loss"].detach(), [p.grad for p in model.parameters()]))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pfr_gradient_reaches_the_model_only_through_attention_maps():
    images, frames, mask = _batch()
    model = _model()
    model(images, frames, mask)["pfr"].backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    nonzero = lambda k: grads[k] is not None and grads[k].abs().sum() > 0  # noqa: E731
    cross = "cross.transformer.cross_attention."
    # The attention maps depend on queries and keys, not on values, the MLP after them or the pooler.
    assert nonzero(cross + "attn.query.weight") and nonzero(cross + "attn.key.weight")
    assert nonzero("recons_weights.conv.0.weight") and nonzero("visual.conv1.weight")
    for k in (cross + "attn.value.weight", cross + "mlp.c_fc.weight", "cross.pooler.dense.weight",
              "similarity_dense.weight"):
        assert not nonzero(k), k
    # With the weight map forced to zero (ReLU(0)), X̂ = 0 and the loss is ‖sg(X_image)‖²: no gradient
    # may reach the encoder, which it would if the image target were not detached.
    model = _model()
    with torch.no_grad():
        model.recons_weights.conv[2].weight.zero_()
        model.recons_weights.conv[2].bias.fill_(-1.0)
    pfr = model(images, frames, mask)["pfr"]
    assert pfr > 0
    pfr.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.visual.parameters())


# ---------------------------------------------------------------- checkpoints
def _fake_loaded(model: RICEModel, fmt="rice_v1", text_init=None, path="fake.bin"):
    """A LoadedCheckpoint holding `model`'s tensors, as if read from a file of format `fmt`."""
    state = model.state_dict()
    c = model.config
    heads = None
    if c.use_pmd:
        heads = HeadsConfig(sim_header=c.sim_header, cross_num_hidden_layers=c.cross_num_hidden_layers,
                            recons_feat=c.recons_feat, pmd_heads=c.pmd_heads)
    return LoadedCheckpoint(
        path=path, format=fmt, vision=c.vision,
        visual_state={k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")},
        heads_state={k: v for k, v in state.items() if not k.startswith("visual.")},
        heads=heads, text_init=text_init or {}, video_pooling=c.video_pooling, extra={},
    )


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_from_checkpoint_restores_every_tensor(depth):
    source = _model(cross_num_hidden_layers=depth)
    loaded = RICEModel.from_checkpoint(_fake_loaded(source))
    assert loaded.config.cross_num_hidden_layers == depth and loaded.config.recons_feat
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_from_checkpoint_overrides_and_errors(caplog):
    ckpt = _fake_loaded(_model())
    with caplog.at_level(logging.INFO):
        encoder_only = RICEModel.from_checkpoint(ckpt, {"sim_header": "mean_pooling", "recons_feat": False})
    assert encoder_only.cross is None and "not loading head tensors" in caplog.text
    ckpt.heads_state["cross.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        RICEModel.from_checkpoint(ckpt)


def test_from_checkpoint_reads_our_stored_config():
    source = _model(pmd_weight=0.3, video_pooling="v2")
    ckpt = _fake_loaded(source, fmt="ours")
    ckpt.extra = {"model_config": source.config.to_dict()}
    assert RICEModel.from_checkpoint(ckpt).config == source.config


def test_init_from_clip_with_and_without_text_tower(caplog):
    clip = _model(sim_header="mean_pooling", recons_feat=False)
    donor = _model(cross_num_hidden_layers=2).cross.transformer.resblocks[0]
    text_init = {"positional_embedding": torch.randn(77, TINY.embed_dim)}
    text_init |= {f"resblock0.{k}": v for k, v in donor.state_dict().items()}
    torch.manual_seed(5)
    model = RICEModel(RICEConfig(vision=TINY, sim_header="cross_attention"))
    model.init_from_clip(_fake_loaded(clip, fmt="openai", text_init=text_init))
    assert torch.equal(model.visual.conv1.weight, clip.visual.conv1.weight)
    assert torch.equal(model.cross.embeddings.position_embeddings.weight, text_init["positional_embedding"])
    assert torch.equal(model.cross.transformer.resblocks[0].attn.in_proj_weight, donor.attn.in_proj_weight)

    torch.manual_seed(5)
    model = RICEModel(RICEConfig(vision=TINY, sim_header="cross_attention"))
    random_table = model.cross.embeddings.position_embeddings.weight.clone()
    with caplog.at_level(logging.INFO):
        model.init_from_clip(_fake_loaded(clip, fmt="openai"))
    assert "no CLIP text tower" in caplog.text
    assert torch.equal(model.cross.embeddings.position_embeddings.weight, random_table)


def _write_v1_checkpoint(path, model: RICEModel, text_width: int):
    """A v1 `pytorch_model.bin` layout (docs/checkpoints.md): `clip.` encoder + text tower, heads, fp16 weights."""
    state = {}
    for k, v in model.state_dict().items():
        key = "clip." + k if k.startswith("visual.") else k
        state[key] = v.half() if v.dim() >= 2 and "embedding" not in k else v.clone()
    w = text_width
    state |= {
        "clip.token_embedding.weight": torch.randn(100, w),
        "clip.positional_embedding": torch.randn(77, w),
        "clip.ln_final.weight": torch.ones(w), "clip.ln_final.bias": torch.zeros(w),
        "clip.text_projection": torch.randn(w, model.config.vision.embed_dim).half(),
        "clip.logit_scale": torch.tensor(4.6052),
    }
    block = model.cross.transformer.resblocks[0].state_dict()
    state |= {f"clip.transformer.resblocks.0.{k}": torch.randn_like(v) for k, v in block.items()}
    torch.save(state, path)
    return state


def test_v1_checkpoint_file_loads_with_every_key(tmp_path):
    from modules import checkpoint
    source = _model()
    path = tmp_path / "pytorch_model.bin.1"
    _write_v1_checkpoint(path, source, text_width=TINY.embed_dim)
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt.heads.pmd_heads == 8  # from the PFR conv in-channels
    model = RICEModel.from_checkpoint(ckpt)  # strict: raises on any missing or unexpected key
    assert model.config.sim_header == "cross_attention" and model.config.recons_feat
    for k, v in source.state_dict().items():
        stored = v.half().float() if v.dim() >= 2 and "embedding" not in k else v
        assert torch.equal(model.state_dict()[k], stored), k


def test_video_without_valid_frames_gets_zero_embedding_and_finite_losses():
    model = _model()
    images, frames, mask = _batch()
    mask[3] = False
    with torch.no_grad():
        emb, tokens, token_mask = model.encode_videos(frames, mask, return_tokens=True)
        losses = model(images, frames, mask)
    assert emb[3].abs().max() == 0 and tokens[3].abs().max() == 0 and not token_mask[3].any()
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_inputs_are_reported():
    model = _model()
    images, frames, mask = _batch()
    with pytest.raises(ValueError, match="frame_mask must be a bool"):
        model(images, frames, mask.long())
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 64, 64\]"):
        model.encode_images(images[:, :, :32])
    with pytest.raises(ValueError, match="pairs must align"):
        model(images[:3], frames, mask)


def test_v2_checkpoint_selects_v2_video_pooling():
    source = _model(sim_header="mean_pooling", recons_feat=False, video_pooling="v2")
    loaded = RICEModel.from_checkpoint(_fake_loaded(source, fmt="rice_v2"))
    assert loaded.config.video_pooling == "v2" and loaded.config.sim_header == "mean_pooling"
