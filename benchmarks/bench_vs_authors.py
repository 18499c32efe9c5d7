"""One ICL+PMD+PFR training step of this project's model and of the authors' v1 code, timed side by side.

    python benchmarks/bench_vs_authors.py --authors_repo DIR                       # ViT-B/32, fp32 and bf16
    python benchmarks/bench_vs_authors.py --authors_repo DIR --warmup 2 --steps 6 --precisions fp32 bf16
    python benchmarks/bench_vs_authors.py --authors_repo DIR --model tiny --warmup 1 --steps 1   # does it run

DIR is a checkout of github.com/DeepAlchemist/crossview-semantic-alignment at
commit 95b6ca5 (the v1 release: main_task_retrieval.py, module/modeling.py, ...),
e.g. `git clone https://github.com/DeepAlchemist/crossview-semantic-alignment DIR
&& git -C DIR checkout 95b6ca5`. Its code is imported from DIR at run time (its
folder is appended to sys.path); nothing of it is part of this project.

What is timed, for both models, on the same random batch (`--batch` pairs, each
one product image and `--frames` valid video frames at the encoder's input size,
on the host, moved to the device inside the step) with random weights:

* ours, as benchmarks/bench_train.py runs it: `utils.train.engine.train_step`
  on `RICEModel(RICEConfig(vision, sim_header="cross_attention",
  recons_feat=True))` (PMD with 2 layers): zero_grad, forward under the
  precision's autocast, backward through `Precision`, gradient-norm clipping at
  1.0, and the fused AdamW of `build_optimizer` (lr 3e-4, coef_lr 1e-3, weight
  decay 0.2, four parameter groups).
* theirs, as main_task_retrieval.py's train_epoch does one step for the row
  ICL+PMD+PFR (`--sim_header cross_attention --cross_num_hidden_layers 2
  --recons_feat`, no --ipd, no --add_text, --max_frames `--frames`):
  `CLIP4Clip.from_pretrained` with the arguments its init_model passes,
  `model(video, video_mask, image, None, None, None)` (under the same autocast
  for bf16), the sum of its loss dict, backward, `clip_grad_norm_(1.0)`, their
  `BertAdam` step with the four parameter groups of their prep_optimizer (lr 3e-4,
  coef_lr 1e-3 for `clip.*`, weight decay 0.2 except bias/LayerNorm names, b2 0.98,
  eps 1e-6, its own per-tensor max_grad_norm 1.0, warmup_cosine with warmup 0.1
  over 1000 steps), zero_grad, and the clamp of clip.logit_scale.

Both models are built in one process and the timed steps alternate (ours,
theirs, then theirs, ours, ...), so drift of the machine's speed hits both.
`--warmup` untimed steps of each come first (the first allocates the optimizer
state). Printed per precision: seconds per step (mean and minimum), pairs per
second (batch / mean seconds), the ratio ours/theirs of pairs per second, the
parameters each optimizer keeps state for (those its steps update: both should
agree), how many parameter tensors the steps changed, the last loss, and the
peak memory of each model.

Peak memory cannot be told apart in one process holding both models, so it is
measured in one child process per model and precision: build the model, then
reset the peak (the peak resident set, VmHWM, via /proc/self/clear_refs on a
CPU; `torch.cuda.reset_peak_memory_stats` on CUDA), run 1 warm-up + 1 step, and
read the peak (VmHWM, or `torch.cuda.max_memory_allocated`). The figure is
the training peak with the model, its gradients and optimizer state resident;
the authors' construction (a few copies of the CLIP state dict) is left out.

What makes the two unequal, by the authors' design, and is kept:
* their model carries CLIP's text tower (~63M parameters for ViT-B/32; it gets
  no gradient, so no optimizer state), which costs memory, not time;
* their optimizer is BertAdam: a Python loop over parameter tensors with a
  norm-clip per tensor; ours is torch's fused AdamW;
* their PMD picks hard negatives with a host round trip (.cpu()) and Python
  loops per pair.
Left out for both: their script wraps the model in DistributedDataParallel
(find_unused_parameters=True) even on one GPU; here neither model is wrapped.

Changes to how their code runs (their files are never edited):
* precision: their model converts CLIP to fp16 (`convert_weights`, their GPU
  training runs CLIP in pure fp16); here it is turned back to fp32
  (`model.float()`) so fp32 and bf16 autocast compare like with like;
* weights: `CLIP.get_config` (which loads ./pretrained/ViT-B-32.pt or
  downloads it) is replaced by a random OpenAI-format state dict made by their
  own `CLIP` class (the vision tower of `--model`, OpenAI's text tower with
  width = the embedding size, 12 layers, vocabulary 49408, context 77);
* `allgather` in module/modeling.py (their AllGather: an all_gather over the
  process group) becomes the identity, and `torch.distributed.barrier` a no-op
  while no process group is initialised: with one process the all_gather is a
  copy forward and a slice backward, i.e. the identity;
* `boto3`, `botocore` and `requests` (imported by module/file_utils.py for
  downloads that never happen here) get empty stand-in modules when not
  installed;
* `from_pretrained` writes ./model.txt: it runs in a temporary folder;
* only for an encoder whose embedding size is not 512 (e.g. `--model tiny`):
  their cross_config.json fixes the PMD width at 512, so `hidden_size` is set
  to the embedding size (it is 512 for ViT-B/32 and B/16, as in their runs).

A sanity line checks that every loss of every step was finite and that the
steps changed the weights of both models; exit 1 otherwise, or when a peak
memory child fails. Fewer of their tensors change: the text tower gets no
gradient, and their warmup_cosine schedule starts at lr 0, so in the first
steps CLIP's rate (3e-7 x step / 100) is below fp32 resolution for weights near
1 such as LayerNorm gains. The LAST line is `key=value` per precision: pairs/s
of each, the ratio, and each peak in GiB.
Their training picks 3 hard negatives per pair, so `--batch` must be >= 4.
Timings on a shared machine are noisy. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modules.config import VISION_CONFIGS  # noqa: E402  (plain data, no torch)
from utils.errors import ConfigError, one_line_errors  # noqa: E402

AUTHORS_COMMIT = "95b6ca5"
AUTHORS_URL = "https://github.com/DeepAlchemist/crossview-semantic-alignment"
# Files of their v1 tree this benchmark imports or reads.
AUTHORS_FILES = ("main_task_retrieval.py", "module/modeling.py", "module/util_module.py", "module/module_clip.py",
                 "module/module_cross.py", "module/optimization.py", "module/cross-base/cross_config.json")
PRECISIONS = ("fp32", "bf16")
HARD_NEGATIVES = 3  # their _cross_similarity: num_sample = 4 in training (1 positive + 3 negatives)
BERT_ADAM_T_TOTAL, BERT_ADAM_WARMUP = 1000, 0.1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors_repo", default=None, metavar="DIR",
                   help=f"checkout of {AUTHORS_URL} at commit {AUTHORS_COMMIT} (required)")
    p.add_argument("--model", default="ViT-B/32", choices=sorted(VISION_CONFIGS), help="encoder configuration")
    p.add_argument("--batch", type=int, default=4, help="pairs per step (>= 4: their PMD takes 3 hard negatives)")
    p.add_argument("--frames", type=int, default=10, help="frames per video")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first")
    p.add_argument("--steps", type=int, default=3, help="timed steps of each model, alternating")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="fp32 and/or bf16 (autocast, no loss scaling)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: "ours:fp32" etc., prints the peak
    args = p.parse_args(argv)
    if args.batch < HARD_NEGATIVES + 1:
        p.error(f"--batch must be >= {HARD_NEGATIVES + 1}: the authors' PMD pairs each video with "
                f"{HARD_NEGATIVES} hard negatives from the batch")
    if args.frames < 1 or args.steps < 1 or args.warmup < 1:
        p.error("--frames, --warmup and --steps must be >= 1")
    if args.frames > 96:  # their assert: max_words (32) + max_frames <= 128 positions
        p.error("--frames must be <= 96 (the authors' model asserts 32 words + frames <= 128)")
    return args


def check_authors_repo(path: str | None) -> Path:
    """The checkout's folder, or a ConfigError naming what is missing and how to get it."""
    how = (f"pass a checkout of {AUTHORS_URL} at commit {AUTHORS_COMMIT} "
           f"(git clone {AUTHORS_URL} DIR && git -C DIR checkout {AUTHORS_COMMIT})")
    if path is None:
        raise ConfigError(f"--authors_repo is required: the authors' code is not part of this project; {how}")
    repo = Path(path).expanduser()
    if not repo.is_dir():
        raise ConfigError(f"--authors_repo {path}: not a folder; {how}")
    missing = [name for name in AUTHORS_FILES if not (repo / name).is_file()]
    if missing:
        raise ConfigError(f"--authors_repo {path}: no {missing[0]} there (not the authors' v1 code); {how}")
    text = (repo / "module/modeling.py").read_text(errors="replace")
    if "class CLIP4Clip" not in text or "recons_feat" not in text:
        raise ConfigError(f"--authors_repo {path}: module/modeling.py has no CLIP4Clip with recons_feat "
                          f"(another version of their code); {how}")
    return repo.resolve()


# ---------------------------------------------------------------------------------------------------------------
# The authors' model, imported from their checkout


def import_authors(repo: Path):
    """Import their module.modeling / module_clip / module_cross / optimization with the shims of the docstring."""
    import torch

    for name in ("boto3", "botocore", "botocore.exceptions", "requests"):  # download-only imports of file_utils
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            if name == "botocore.exceptions":
                stub.ClientError = type("ClientError", (Exception,), {})
            sys.modules[name] = stub
    if str(repo) not in sys.path:
        sys.path.append(str(repo))  # last: this project's own packages keep precedence
    import module.modeling as modeling
    import module.module_clip as module_clip
    import module.module_cross as module_cross
    import module.optimization as optimization

    if not Path(modeling.__file__).resolve().is_relative_to(repo):
        raise ConfigError(f"--authors_repo {repo}: `import module.modeling` found {modeling.__file__} instead; "
                          "run from a folder without another `module` package")
    import logging

    logging.getLogger("module").setLevel(logging.ERROR)  # their construction logs every size as a warning
    modeling.allgather = lambda tensor: tensor  # one process: all_gather is the identity
    if not getattr(torch.distributed.barrier, "_bench_shim", False):
        barrier = torch.distributed.barrier

        def barrier_when_initialised(*a, **k):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                return barrier(*a, **k)
            return None

        barrier_when_initialised._bench_shim = True
        torch.distributed.barrier = barrier_when_initialised
    return types.SimpleNamespace(modeling=modeling, clip=module_clip, cross=module_cross, optim=optimization)


def authors_clip_state_dict(authors, vision) -> dict:
    """A random OpenAI-format CLIP state dict from their own CLIP class (vision of `vision`, OpenAI's text tower)."""
    clip = authors.clip.CLIP(vision.embed_dim, vision.image_size, vision.layers, vision.width, vision.patch_size,
                             77, 49408, vision.embed_dim, max(1, vision.embed_dim // 64), 12)
    return clip.state_dict()


def build_authors(authors, vision, frames: int, device):
    """CLIP4Clip as their init_model builds it for ICL+PMD+PFR, kept in fp32, on `device`, in train mode."""
    state = authors_clip_state_dict(authors, vision)
    get_clip, get_cross = authors.clip.CLIP.get_config, authors.cross.CrossConfig.get_config

    def cross_config(*a, **k):
        config, weights = get_cross(*a, **k)
        if vision.embed_dim != config.hidden_size:  # their json fixes 512, the embedding size of ViT-B
            config.hidden_size, config.intermediate_size = vision.embed_dim, 4 * vision.embed_dim
        return config, weights

    authors.clip.CLIP.get_config = staticmethod(lambda pretrained_clip_name="ViT-B/32": dict(state))
    authors.cross.CrossConfig.get_config = cross_config
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # from_pretrained writes ./model.txt
            model = authors.modeling.CLIP4Clip.from_pretrained(
                cross_model_name="cross-base", max_words=32, max_frames=frames, one_stage=False, linear_patch="2d",
                sim_header="cross_attention", pretrained_clip_name="ViT-B/32", cross_num_hidden_layers=2,
                state_dict=None, cache_dir=tmp, type_vocab_size=2, training=True, recons_feat=True,
                embedding_sim=False, add_text=False)
    finally:
        os.chdir(cwd)
        authors.clip.CLIP.get_config, authors.cross.CrossConfig.get_config = get_clip, get_cross
    model = model.float().to(device)  # undo convert_weights (CLIP in fp16): fp32 master weights like ours
    model.train()
    return model


def authors_optimizer(authors, model, lr: float, coef_lr: float, weight_decay: float):
    """Their BertAdam with the four groups of their prep_optimizer (clip / rest x decay / no decay)."""
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    groups = {(clip, decay): [] for clip in (True, False) for decay in (True, False)}
    for name, param in model.named_parameters():
        groups[("clip." in name, not any(nd in name for nd in no_decay))].append(param)
    param_groups = [
        {"params": groups[(True, True)], "weight_decay": weight_decay, "lr": lr * coef_lr},
        {"params": groups[(False, True)], "weight_decay": weight_decay},
        {"params": groups[(True, False)], "weight_decay": 0.0, "lr": lr * coef_lr},
        {"params": groups[(False, False)], "weight_decay": 0.0},
    ]
    return authors.optim.BertAdam(param_groups, lr=lr, warmup=BERT_ADAM_WARMUP, schedule="warmup_cosine",
                                  b1=0.9, b2=0.98, e=1e-6, t_total=BERT_ADAM_T_TOTAL, weight_decay=weight_decay,
                                  max_grad_norm=1.0)


# ---------------------------------------------------------------------------------------------------------------
# One step of each


class Runner:
    """One model, its optimizer and its step function; `step()` returns the loss as a float."""

    def __init__(self, which: str, precision_name: str, args: argparse.Namespace, authors=None):
        import bench_train
        import torch

        from modules.rice import RICEConfig, RICEModel
        from utils.runtime.precision import Precision, autocast
        from utils.train.engine import train_step
        from utils.train.optim import build_optimizer

        self.device = device = torch.device(args.device)
        vision = VISION_CONFIGS[args.model]
        torch.manual_seed(0)
        self.batch = bench_train.random_batch(vision, args.batch, args.frames, device)
        lr, coef_lr, wd, clip = bench_train.LR, bench_train.COEF_LR, bench_train.WEIGHT_DECAY, bench_train.CLIP_GRAD_NORM
        if which == "ours":
            model = RICEModel(RICEConfig(vision=vision, sim_header="cross_attention", recons_feat=True)).to(device)
            model.train()
            optimizer = build_optimizer(model, lr, coef_lr, wd)
            precision = Precision(precision_name, device)

            def step() -> float:
                losses = train_step(model, self.batch, optimizer, precision, accumulation=1, clip_grad_norm=clip,
                                    device=device)
                return losses["loss"].item()
        else:
            model = build_authors(authors, vision, args.frames, device)
            optimizer = authors_optimizer(authors, model, lr, coef_lr, wd)
            max_logit_scale = math.log(100)

            def step() -> float:
                video = self.batch["frames"].to(device, non_blocking=True)
                video_mask = self.batch["frame_mask"].to(device, non_blocking=True).long()  # their loader: int64
                image = self.batch["image"].to(device, non_blocking=True)
                with autocast(precision_name, device):
                    loss_dict = model(video, video_mask, image, None, None, None)
                loss = sum(loss_dict.values())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                optimizer.zero_grad()
                torch.clamp_(model.clip.logit_scale.data, max=max_logit_scale)
                return loss.item()

        self.model, self.optimizer, self._step = model, optimizer, step

    def step(self) -> float:
        import torch

        loss = self._step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss

    def checksums(self):
        """Per-tensor float64 sums of the parameters: cheap evidence that a step changed them."""
        import torch

        with torch.no_grad():
            return torch.stack([p.detach().double().sum().cpu() for p in self.model.parameters()])

    def changed(self, before) -> tuple[int, int]:
        """(parameter tensors changed since `before`, all parameter tensors)."""
        changed = (self.checksums() != before).tolist()
        return sum(changed), len(changed)

    def optimized(self) -> int:
        """Parameters the optimizer keeps state for: those its steps update (a gradient came back)."""
        return sum(p.numel() for p in self.model.parameters() if self.optimizer.state.get(p))


# ---------------------------------------------------------------------------------------------------------------
# Peak memory, one model per child process


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set


def run_one(args: argparse.Namespace, repo: Path) -> None:
    """Child process: one model, one precision; 1 warm-up + 1 step after the peak reset; prints peak_gib=."""
    import bench_train

    which, precision_name = args.one.split(":")
    authors = import_authors(repo) if which == "authors" else None
    runner = Runner(which, precision_name, args, authors)
    reset_peak(runner.device)
    for _ in range(2):
        runner.step()
    print(f"peak_gib={bench_train.peak_memory_gib(runner.device):.3f}", flush=True)


def child_peak(args: argparse.Namespace, which: str, precision_name: str) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--authors_repo", args.authors_repo, "--model", args.model,
           "--batch", str(args.batch), "--frames", str(args.frames), "--device", args.device,
           "--one", f"{which}:{precision_name}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("peak_gib="):
        print(f"peak memory of {which} {precision_name} FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr, flush=True)
        return float("nan")
    return float(lines[-1].split("=", 1)[1])


# ---------------------------------------------------------------------------------------------------------------


def compare(args: argparse.Namespace, authors, precision_name: str) -> tuple[dict, bool]:
    """Build both, warm up, time alternating steps; print this precision's rows; return figures and sanity."""
    ours = Runner("ours", precision_name, args)
    theirs = Runner("authors", precision_name, args, authors)
    runners = {"ours": ours, "authors": theirs}
    before = {name: r.checksums() for name, r in runners.items()}
    losses = {name: [] for name in runners}
    for _ in range(args.warmup):
        for name, r in runners.items():
            losses[name].append(r.step())
    times = {name: [] for name in runners}
    for i in range(args.steps):
        for name in (("ours", "authors") if i % 2 == 0 else ("authors", "ours")):
            start = time.perf_counter()
            losses[name].append(runners[name].step())
            times[name].append(time.perf_counter() - start)
    figures, sane = {}, True
    for name, r in runners.items():
        changed, tensors = r.changed(before[name])
        finite = all(math.isfinite(v) for v in losses[name])
        sane &= finite and changed > 0
        mean = sum(times[name]) / len(times[name])
        figures[name] = {"pairs_s": args.batch / mean, "mean": mean, "min": min(times[name]),
                         "loss": losses[name][-1], "finite": finite, "changed": f"{changed}/{tensors}",
                         "optimized_m": r.optimized() / 1e6}
    del ours, theirs, runners
    return figures, sane


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with one_line_errors():
        repo = check_authors_repo(args.authors_repo)
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train, for the shared batch and settings
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but CUDA is not available; use --device cpu")
        if args.one is not None:
            run_one(args, repo)
            return 0
        authors = import_authors(repo)
        vision = VISION_CONFIGS[args.model]
        peak_kind = "CUDA max allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
        print(f"{args.model}, ICL+PMD+PFR, {args.batch} pairs x {args.frames} frames at {vision.image_size} px, "
              f"device {args.device}, {torch.get_num_threads()} threads; ours: train_step + fused AdamW, "
              f"authors ({AUTHORS_COMMIT}): CLIP4Clip in fp32 + BertAdam; {args.warmup} warm-up + {args.steps} "
              f"timed steps each, alternating; peak = {peak_kind} of one model in its own process "
              "(1 warm-up + 1 step after the build)", flush=True)
        print(f"{'precision':<9s} {'model':<8s} {'s/step':>8s} {'min s':>8s} {'pairs/s':>8s} {'peak GiB':>9s} "
              f"{'optim. M':>9s} {'changed':>9s} {'loss':>8s}", flush=True)
        summary, all_sane = [], True
        for precision_name in args.precisions:
            figures, sane = compare(args, authors, precision_name)
            gc.collect()  # both models go before the memory children start
            all_sane &= sane
            for name in ("ours", "authors"):
                figures[name]["peak"] = child_peak(args, name, precision_name)
                all_sane &= math.isfinite(figures[name]["peak"])
                f = figures[name]
                print(f"{precision_name:<9s} {name:<8s} {f['mean']:8.2f} {f['min']:8.2f} {f['pairs_s']:8.3f} "
                      f"{f['peak']:9.2f} {f['optimized_m']:9.1f} {f['changed']:>9s} {f['loss']:8.3f}", flush=True)
            ratio = figures["ours"]["pairs_s"] / figures["authors"]["pairs_s"]
            print(f"{precision_name:<9s} ratio ours/authors: {ratio:.2f}x pairs/s, "
                  f"{figures['ours']['peak'] / figures['authors']['peak']:.2f}x peak memory", flush=True)
            summary += [f"{precision_name}_ours_pairs_s={figures['ours']['pairs_s']:.3f}",
                        f"{precision_name}_authors_pairs_s={figures['authors']['pairs_s']:.3f}",
                        f"{precision_name}_ratio={ratio:.3f}",
                        f"{precision_name}_ours_peak_gib={figures['ours']['peak']:.2f}",
                        f"{precision_name}_authors_peak_gib={figures['authors']['peak']:.2f}"]
            if not sane:
                print(f"sanity FAILED ({precision_name}): a loss was not finite or a model's weights did not change",
                      flush=True)
        if all_sane:
            print("sanity ok: every loss finite, both models' weights changed", flush=True)
        print(" ".join(summary), flush=True)
        return 0 if all_sane else 1


if __name__ == "__main__":
    sys.exit(main())
