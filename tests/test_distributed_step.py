"""A real 2-process step (torchrun, gloo, CPU) equals a single-process step on the whole batch.

The model runs in eval mode in both cases so PMD dropout is off: random masks
cannot be matched between a 2-shard and a 1-shard run. Everything else
(global ICL negatives, global hard-negative mining, PFR, chunking) is exercised.
Both runs use float64: in fp32 the ×100 PMD scale turns summation-order
rounding into ~1e-5 gradient noise (e.g. in `similarity_dense`), which would
blur the comparison; in fp64 rounding is ~1e-12 and any logic error shows.
"""

from pathlib import Path

import torch

from modules.config import VISION_CONFIGS
from modules.rice import RICEConfig, RICEModel
from tests.processes import torchrun_two

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_step_equals_single_process_step(tmp_path):
    torch.manual_seed(0)
    config = RICEConfig(vision=VISION_CONFIGS["tiny"], sim_header="cross_attention", recons_feat=True,
                        pmd_chunk_size=5)
    model = RICEModel(config).double().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 64, 64, generator=g, dtype=torch.float64)
    frames = torch.randn(6, 3, 3, 64, 64, generator=g, dtype=torch.float64)
    frame_mask = torch.ones(6, 3, dtype=torch.bool)
    frame_mask[1, 1:] = False
    frame_mask[4, 2:] = False
    torch.save({"config": config.to_dict(), "state": model.state_dict(), "images": images, "frames": frames,
                "frame_mask": frame_mask}, tmp_path / "in.pt")

    torchrun_two(ROOT / "tests" / "dist_step_worker.py", tmp_path / "in.pt", tmp_path / "out.pt")
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["world_size"] == 2

    losses = model(images, frames, frame_mask)  # the single-process reference on the whole batch
    losses["loss"].backward()
    assert set(result["losses"]) == {"loss", "icl", "pmd", "pfr"}
    for k, v in losses.items():
        torch.testing.assert_close(result["losses"][k], v.detach(), atol=1e-5, rtol=0, msg=k)
    for k, p in model.named_parameters():
        torch.testing.assert_close(result["grads"][k], p.grad, atol=1e-5, rtol=0, msg=k)
        # Gradient accumulation across processes: still the whole global batch's gradient.
        torch.testing.assert_close(result["accumulated_grads"][k], p.grad, atol=1e-5, rtol=0, msg=f"accumulated {k}")


def test_helpers_without_process_group_are_identity():
    from utils.runtime import distributed

    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1 and distributed.is_main_process()
    assert distributed.all_gather_with_grad(x) is x
    assert torch.equal(distributed.all_gather(x), x)
    assert torch.equal(distributed.all_reduce_mean(x), x)
