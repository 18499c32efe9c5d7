"""PMD decoder and PFR head: v1 names and shapes, and numbers against an independent oracle."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.config import VisionConfig
from modules.heads import (
    PMD_LAYER_NORM_EPS,
    CrossAttentionBlock,
    PairwiseMatchingDecoder,
    ReconstructionWeights,
    drop_cls,
    load_text_init,
)
from modules.rice import RICEConfig, RICEModel


def _v1_head_shapes(e: int, heads: int = 8) -> dict[str, tuple]:
    """docs/checkpoints.md: every PMD/PFR tensor of a v1 ICL+PMD+PFR checkpoint with PMD width e."""
    shapes = {
        "cross.embeddings.position_embeddings.weight": (77, e),
        "similarity_dense.weight": (1, e),
        "similarity_dense.bias": (1,),
        "recons_weights.conv.0.weight": (heads // 2, heads, 1, 1),
        "recons_weights.conv.0.bias": (heads // 2,),
        "recons_weights.conv.2.weight": (1, heads // 2, 1, 1),
        "recons_weights.conv.2.bias": (1,),
        "cross.pooler.ln_pool.weight": (e,),
        "cross.pooler.ln_pool.bias": (e,),
        "cross.pooler.dense.weight": (e, e),
        "cross.pooler.dense.bias": (e,),
    }
    block = "cross.transformer.resblocks.0."
    shapes |= {
        block + "attn.in_proj_weight": (3 * e, e),
        block + "attn.in_proj_bias": (3 * e,),
        block + "attn.out_proj.weight": (e, e),
        block + "attn.out_proj.bias": (e,),
    }
    cross = "cross.transformer.cross_attention."
    for name in ("query", "key", "value"):
        shapes |= {f"{cross}attn.{name}.weight": (e, e), f"{cross}attn.{name}.bias": (e,)}
    for prefix in (block, cross):
        for ln in ("ln_1", "ln_2"):
            shapes |= {f"{prefix}{ln}.weight": (e,), f"{prefix}{ln}.bias": (e,)}
        shapes |= {
            prefix + "mlp.c_fc.weight": (4 * e, e),
            prefix + "mlp.c_fc.bias": (4 * e,),
            prefix + "mlp.c_proj.weight": (e, 4 * e),
            prefix + "mlp.c_proj.bias": (e,),
        }
    return shapes


def test_v1_parameter_names_and_shapes_at_width_512():
    vision = VisionConfig(image_size=32, patch_size=16, width=64, layers=1, heads=1, embed_dim=512)
    model = RICEModel(RICEConfig(vision=vision, sim_header="cross_attention", recons_feat=True))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("visual.")}
    assert got == _v1_head_shapes(512)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_decoder_shapes_at_several_depths(depth):
    torch.manual_seed(0)
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=depth, num_queries=5).eval()
    assert len(decoder.transformer.resblocks) == depth - 1  # depth L = L-1 self blocks + 1 cross block
    pooled, attention = decoder(torch.randn(3, 5, 32), torch.randn(3, 10, 32), torch.ones(3, 10, dtype=torch.bool))
    assert pooled.shape == (3, 32)
    assert attention.shape == (3, 4, 5, 10)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4, 5))


def test_depth_zero_is_rejected():
    with pytest.raises(ValueError, match="cross_num_hidden_layers"):
        PairwiseMatchingDecoder(width=32, heads=4, depth=0, num_queries=5)


def test_all_decoder_layer_norms_use_eps_1e_12():
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=3, num_queries=5)
    norms = [m for m in decoder.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 2 + 1  # two self blocks, the cross block, the pooler
    assert all(m.eps == PMD_LAYER_NORM_EPS == 1e-12 for m in norms)


def _oracle_decoder(decoder: PairwiseMatchingDecoder, img, vid, mask):
    """The v1 decoder written with nn.MultiheadAttention (output projection set to identity)."""
    e = img.shape[-1]
    x = img + decoder.embeddings.position_embeddings.weight[: img.shape[1]]
    for block in decoder.transformer.resblocks:
        x = block(x)
    cross = decoder.transformer.cross_attention
    mha = nn.MultiheadAttention(e, cross.attn.heads, batch_first=True, bias=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([cross.attn.query.weight, cross.attn.key.weight, cross.attn.value.weight]))
        mha.in_proj_bias.copy_(torch.cat([cross.attn.query.bias, cross.attn.key.bias, cross.attn.value.bias]))
        mha.out_proj.weight.copy_(torch.eye(e))
        mha.out_proj.bias.zero_()
    ln = lambda t, m: F.layer_norm(t, (e,), m.weight, m.bias, 1e-12)  # noqa: E731
    attended, probs = mha(ln(x, cross.ln_1), ln(vid, cross.ln_1), ln(vid, cross.ln_1),
                          key_padding_mask=~mask, average_attn_weights=False)
    x = x + attended
    h = ln(x, cross.ln_2) @ cross.mlp.c_fc.weight.T + cross.mlp.c_fc.bias
    x = x + (h * torch.sigmoid(1.702 * h)) @ cross.mlp.c_proj.weight.T + cross.mlp.c_proj.bias
    pooled = ln(x, decoder.pooler.ln_pool)[:, 0] @ decoder.pooler.dense.weight.T + decoder.pooler.dense.bias
    return pooled * torch.sigmoid(1.702 * pooled), probs


def test_decoder_matches_oracle_with_masked_keys():
    torch.manual_seed(0)
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=2, num_queries=5).eval()
    img, vid = torch.randn(2, 5, 32), torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 5:] = False
    pooled, attention = decoder(img, vid, mask)
    expected_pooled, expected_probs = _oracle_decoder(decoder, img, vid, mask)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention, expected_probs, atol=1e-6, rtol=1e-5)
    assert attention[1, :, :, 5:].abs().max() == 0  # padded keys get exactly zero weight
    # Masked key values cannot change anything.
    vid2 = vid.clone()
    vid2[1, 5:] = 1e3
    torch.testing.assert_close(decoder(img, vid2, mask)[0], pooled, atol=0, rtol=0)


def test_positions_are_added_to_queries_only():
    torch.manual_seed(0)
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=1, num_queries=5).eval()
    img, vid, mask = torch.randn(2, 5, 32), torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.bool)
    pooled, _ = decoder(img, vid, mask)
    with torch.no_grad():
        table = decoder.embeddings.position_embeddings.weight
        table[5:] += torch.randn_like(table[5:])  # rows beyond N are unused
    torch.testing.assert_close(decoder(img, vid, mask)[0], pooled, atol=0, rtol=0)
    with torch.no_grad():
        table[:5] += torch.randn_like(table[:5])  # (a constant shift would vanish in the LayerNorms)
    assert not torch.allclose(decoder(img, vid, mask)[0], pooled)


def test_cross_block_has_no_output_projection_and_one_shared_norm():
    block = CrossAttentionBlock(width=16, heads=2, dropout=0.0)
    names = {k for k, _ in block.named_parameters()}
    assert not any("out_proj" in k for k in names)
    assert {k.split(".")[0] for k in names} == {"ln_1", "attn", "ln_2", "mlp"}


def test_drop_cls_removes_query_row_and_every_frame_cls_column():
    n, frames = 3, 2  # 3 tokens per frame (CLS + 2 patches), 2 frames
    attention = torch.arange(1 * 1 * n * frames * n, dtype=torch.float32).view(1, 1, n, frames * n)
    out = drop_cls(attention, n)
    assert out.shape == (1, 1, n - 1, frames * (n - 1))
    keep_cols = [1, 2, 4, 5]  # columns 0 and 3 are the frames' CLS tokens
    torch.testing.assert_close(out[0, 0], attention[0, 0, 1:][:, keep_cols])


def test_reconstruction_weights_are_two_relu_1x1_convs():
    torch.manual_seed(0)
    head = ReconstructionWeights(heads=8)
    attention = torch.rand(2, 8, 4, 6)
    c0, c2 = head.conv[0], head.conv[2]
    hidden = torch.relu(torch.einsum("oh,phnm->ponm", c0.weight[:, :, 0, 0], attention) + c0.bias[:, None, None])
    expected = torch.relu(torch.einsum("oh,phnm->ponm", c2.weight[:, :, 0, 0], hidden) + c2.bias[:, None, None])
    torch.testing.assert_close(head(attention), expected[:, 0])
    with pytest.raises(ValueError, match="even"):
        ReconstructionWeights(heads=3)


def test_load_text_init_copies_positions_and_block_zero():
    torch.manual_seed(0)
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=2, num_queries=5)
    donor = PairwiseMatchingDecoder(width=32, heads=4, depth=2, num_queries=5).transformer.resblocks[0]
    text_init = {"positional_embedding": torch.randn(77, 32)}
    text_init |= {f"resblock0.{k}": v for k, v in donor.state_dict().items()}
    load_text_init(decoder, text_init)
    torch.testing.assert_close(decoder.embeddings.position_embeddings.weight, text_init["positional_embedding"])
    for k, v in donor.state_dict().items():
        torch.testing.assert_close(decoder.transformer.resblocks[0].state_dict()[k], v)
    with pytest.raises(ValueError, match="width"):
        load_text_init(decoder, {"positional_embedding": torch.randn(77, 48)})


def test_reconstruction_weights_start_alive():
    for seed in range(5):
        torch.manual_seed(seed)
        attention = torch.rand(1, 8, 4, 6).softmax(-1).requires_grad_()
        weights = ReconstructionWeights(heads=8)(attention)
        weights.sum().backward()
        assert weights.min() >= 0 and weights.max() > 0 and attention.grad.abs().sum() > 0


def test_video_index_equals_repeating_the_videos():
    """Pairs that share a video: one video-side pass plus an index gives what repeated copies give,
    forward (scores, attention) and backward (every parameter and the token gradients), dropout on."""
    torch.manual_seed(0)
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=2, num_queries=5, dropout=0.1).train()
    images = torch.randn(7, 5, 32, requires_grad=True)
    videos = torch.randn(3, 12, 32, requires_grad=True)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 8:] = False  # a video with padded frames
    index = torch.tensor([0, 1, 1, 2, 0, 1, 2])

    torch.manual_seed(1)
    pooled, attention = decoder(images, videos, mask, index)
    (pooled.square().sum() + attention.sum()).backward()
    grads = {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}
    image_grad, video_grad = images.grad.clone(), videos.grad.clone()

    decoder.zero_grad()
    images.grad, videos.grad = None, None
    torch.manual_seed(1)  # same dropout masks: the random draws have the same shapes and order
    ref_pooled, ref_attention = decoder(images, videos[index], mask[index])
    (ref_pooled.square().sum() + ref_attention.sum()).backward()

    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention, ref_attention, rtol=1e-5, atol=1e-6)
    assert attention[2, :, :, 8:].abs().max() < 1e-6  # pair 2 is video 1: its padding gets no attention
    assert grads.keys() == {n for n, p in decoder.named_parameters() if p.grad is not None}
    for name, p in decoder.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(image_grad, images.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(video_grad, videos.grad, rtol=1e-4, atol=1e-6)


def test_score_pairs_with_video_index():
    model = RICEModel(RICEConfig(vision=VisionConfig(image_size=32, patch_size=16, width=32, layers=1, heads=2,
                                                     embed_dim=32),
                                 sim_header="cross_attention", pmd_heads=4)).eval()
    image_tokens, video_tokens = torch.randn(5, 5, 32), torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        got = model.score_pairs(image_tokens, video_tokens, mask, index)
        want = model.score_pairs(image_tokens, video_tokens[index], mask[index])
    assert got.shape == (5,)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_image_side_once_per_image_equals_decoding_every_pair_alone():
    """Self blocks run once per image and gathered by image_index: the numbers of running each pair's
    self blocks alone (fp32, within 1e-6), forward and backward; dropout off."""
    torch.manual_seed(0)
    decoder = PairwiseMatchingDecoder(width=32, heads=4, depth=3, num_queries=5).eval()  # two self blocks
    images = torch.randn(3, 5, 32, requires_grad=True)
    videos = torch.randn(4, 12, 32, requires_grad=True)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[2, 6:] = False
    image_index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 0])
    video_index = torch.tensor([0, 1, 2, 3, 0, 2, 1, 3, 3])

    results = []
    for args in ((images, videos, mask, video_index, image_index),
                 (images[image_index], videos[video_index], mask[video_index])):  # every pair alone
        decoder.zero_grad()
        images.grad, videos.grad = None, None
        pooled, attention = decoder(*args)
        (pooled.square().sum() + attention.sum()).backward()
        grads = [p.grad.clone() for p in decoder.parameters()] + [images.grad.clone(), videos.grad.clone()]
        results.append((pooled.detach(), attention.detach(), grads))
    (pooled, attention, grads), (ref_pooled, ref_attention, ref_grads) = results
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(attention, ref_attention, rtol=0, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_score_pairs_in_chunks_with_both_indices_equals_every_pair_alone():
    vision = VisionConfig(image_size=32, patch_size=16, width=32, layers=1, heads=2, embed_dim=32)
    torch.manual_seed(0)
    model = RICEModel(RICEConfig(vision=vision, sim_header="cross_attention", pmd_heads=4, pmd_chunk_size=2)).eval()
    image_tokens, video_tokens = torch.randn(3, 5, 32), torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 5:] = False
    image_index, video_index = torch.tensor([2, 0, 1, 2, 0]), torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        got = model.score_pairs(image_tokens, video_tokens, mask, video_index, image_index)  # 3 chunks
        want = torch.stack([model.score_pairs(image_tokens[[i]], video_tokens[[v]], mask[[v]])[0]
                            for i, v in zip(image_index.tolist(), video_index.tolist())])
    assert got.shape == (5,)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
