"""The training step has no data-dependent device operation, and its numbers are the masked formulation's.

On the `meta` device tensors have shapes but no values: an operation whose
result shape depends on values (boolean-mask indexing, nonzero, unique) or
that reads a value (`.item()`, `bool(t)`, `.cpu()`) raises there. These are
exactly the operations that make a GPU step wait for the device, so a step
that runs with the model and pixels on `meta` (and the frame mask on the
host, as the loader gives it) has none.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import modules.rice as rice
from modules.config import VISION_CONFIGS
from modules.heads import drop_cls
from modules.rice import RICEConfig, RICEModel, valid_frames
from utils.runtime.precision import Precision
from utils.train.engine import _accumulated_backward, train_step

TINY = VISION_CONFIGS["tiny"]  # 64 px, 17 tokens, embed 64
META = torch.device("meta")


@pytest.fixture
def meta_autocast(monkeypatch):
    """torch.autocast has no `meta` device type; the losses only turn it off, so there it is a no-op."""
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)


def _model(**kw) -> RICEModel:
    torch.manual_seed(0)
    config = dict(vision=TINY, sim_header="cross_attention", recons_feat=True, pmd_chunk_size=5)
    return RICEModel(RICEConfig(**{**config, **kw}))


def _mask(b: int, t: int) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 1:] = False
    mask[2, 2:] = False
    return mask


def test_the_meta_device_catches_the_waits_this_test_looks_for():
    """The operations the step must not contain fail on meta (so the tests below can fail)."""
    frames, mask = torch.empty(4, 3, 8, device=META), _mask(4, 3)
    for op in (lambda: frames[mask.to(META)], lambda: mask.to(META).nonzero(), lambda: frames.sum().item(),
               lambda: torch.unique(frames), lambda: frames.cpu()):
        with pytest.raises((NotImplementedError, RuntimeError)):
            op()


@pytest.mark.parametrize("world, rank", [(1, 0), (3, 1)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_step_on_meta_has_no_device_wait(meta_autocast, monkeypatch, world, rank, checkpointing):
    """Forward and backward of ICL+PMD+PFR (dropout on) on meta, alone and with faked gathered shapes."""
    if world > 1:  # a rank of `world` processes: the gathers return world x the local rows
        monkeypatch.setattr(rice, "get_rank", lambda: rank)
        monkeypatch.setattr(rice, "all_gather_with_grad", lambda x: torch.cat([x] * world))
        monkeypatch.setattr(rice, "all_gather", lambda x: torch.cat([x] * world).detach())
    model = _model().train().to(META)
    model.set_grad_checkpointing(checkpointing)
    b, t = 4, 3
    images, frames = torch.empty(b, 3, 64, 64, device=META), torch.empty(b, t, 3, 64, 64, device=META)
    mask = _mask(b, t)  # on the host, as the loader gives it
    losses = model(images, frames, mask)
    assert set(losses) == {"loss", "icl", "pmd", "pfr"} and losses["loss"].device == META
    losses["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.device == META, name

    # The trainer's path: mask and its valid frames moved to the device beforehand (DDP moves inputs).
    model.zero_grad()
    model(images, frames, mask.to(META), valid_frames(mask).to(META))["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_train_step_and_accumulation_on_meta(meta_autocast):
    """The engine's whole step (host mask, AdamW, clipping) and the gradient-cache path, on meta."""
    model = _model().train().to(META)
    batch = {"image": torch.empty(4, 3, 64, 64), "frames": torch.empty(4, 3, 3, 64, 64), "frame_mask": _mask(4, 3)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = train_step(model, batch, optimizer, Precision("fp32", META), accumulation=1, clip_grad_norm=1.0,
                     device=META)
    assert out["loss"].device == META and out["grad_norm"].device == META
    images, frames = batch["image"].to(META), batch["frames"].to(META)
    losses = _accumulated_backward(model, images, frames, batch["frame_mask"], Precision("fp32", META), 2)
    assert losses["loss"].device == META


def _masked_step(model: RICEModel, images, frames, mask) -> torch.Tensor:
    """The step written the old way: boolean masks, candidates read on the host, pairs decoded in chunks
    with every pair's self blocks run for that pair (the dropout draws of the old code, in its order)."""
    b, t = mask.shape
    n, e, c = TINY.num_tokens, TINY.embed_dim, 1 + model.config.num_hard_negatives
    emb, tok = model.visual(torch.cat([images, frames[mask]]), True)
    image_emb = F.normalize(emb[:b], dim=-1)
    frame_emb = emb.new_zeros(b, t, e)
    frame_emb[mask] = emb[b:]
    video_emb = F.normalize(F.normalize(frame_emb, dim=-1).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    video_tok = tok.new_zeros(b, t, n, e)
    video_tok[mask] = tok[b:]
    video_tok, tok_mask = video_tok.reshape(b, t * n, e), mask.repeat_interleave(n, dim=1)
    logits = 100 * image_emb @ video_emb.T
    labels = torch.arange(b)
    icl = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    similarity = (image_emb @ video_emb.T).detach().tolist()
    pairs = [(i, j) for i in range(b)
             for j in [i, *sorted((j for j in range(b) if j != i), key=lambda j: -similarity[i][j])[: c - 1]]]
    scores, pfr, size = [], 0.0, model.config.pmd_chunk_size
    for start in range(0, len(pairs), size):
        ii, jj = zip(*pairs[start : start + size])
        pooled, attention = model.cross(tok[list(ii)], video_tok[list(jj)], tok_mask[list(jj)])
        scores.append(model.similarity_dense(pooled)[:, 0])
        for row in (r for r, (i, j) in enumerate(zip(ii, jj)) if i == j):  # PFR of the positive pairs
            weights = model.recons_weights(drop_cls(attention[row : row + 1], n))[0]
            patches = (video_tok[jj[row]] * tok_mask[jj[row], :, None]).view(t, n, e)[:, 1:].reshape(-1, e)
            pfr = pfr + ((weights @ patches.detach() - tok[ii[row], 1:].detach()) ** 2).mean() / b
    pmd = F.cross_entropy(100 * torch.cat(scores).view(b, c), torch.zeros(b, dtype=torch.long))
    return icl + pmd + 0.05 * pfr


@pytest.mark.parametrize("chunk, checkpointing, mode", [(3, False, "eval"), (16, False, "eval"), (5, True, "eval"),
                                                        (3, False, "train"), (5, True, "train")])
def test_step_equals_the_masked_formulation(chunk, checkpointing, mode):
    """Loss and every gradient equal the old formulation's (float64), whatever the chunking; in training
    mode with the same PMD dropout draws (per pair, as v1 draws them)."""
    model = _model(pmd_chunk_size=chunk).double().train(mode == "train")
    model.set_grad_checkpointing(checkpointing)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 64, 64, generator=g, dtype=torch.float64)
    frames = torch.randn(4, 3, 3, 64, 64, generator=g, dtype=torch.float64)
    mask = _mask(4, 3)

    torch.manual_seed(7)
    loss = model(images, frames, mask)["loss"]
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(7)
    expected = _masked_step(model, images, frames, mask)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-10)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-7, atol=1e-10, msg=k)


def test_shared_dropout_draws_the_query_dropout_once_per_image():
    """With it a pair repeated twice scores the same (one draw per image); by default each pair draws its own."""
    model = _model().train()
    model.cross.transformer.cross_attention.attn.dropout.p = 0.0  # only the query dropout is random here
    image_tokens, video_tokens = torch.randn(1, 17, 64), torch.randn(1, 3 * 17, 64)
    mask, twice = torch.ones(1, 3 * 17, dtype=torch.bool), torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        per_pair = model.score_pairs(image_tokens, video_tokens, mask, twice, twice)
        model.set_pmd_shared_dropout(True)
        shared = model.score_pairs(image_tokens, video_tokens, mask, twice, twice)
    assert per_pair[0] != per_pair[1]
    assert shared[0] == shared[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_step_never_synchronizes():
    """On a GPU, forward and backward of the step under CUDA's sync debug mode "error" (host mask, pinned)."""
    device = torch.device("cuda")
    model = _model(pmd_chunk_size=5).train().to(device)
    images, frames = torch.randn(4, 3, 64, 64, device=device), torch.randn(4, 3, 3, 64, 64, device=device)
    mask = _mask(4, 3).pin_memory()
    model(images, frames, mask)["loss"].backward()  # warm-up: library handles and workspaces are made once
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for checkpointing in (False, True):
            model.set_grad_checkpointing(checkpointing)
            model(images, frames, mask)["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
