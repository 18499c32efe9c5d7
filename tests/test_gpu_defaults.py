"""GPU defaults that a CPU can check: TF32 switching, memory windows, the flags, the encoder under torch.compile."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lpr4m_train
from modules.clip_vit import VisionTransformer
from modules.config import VISION_CONFIGS
from utils.runtime.precision import set_tf32
from utils.train import build, trainer
from utils.train.build import memory_window
from utils.train.logs import read_log

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tf32_settings():
    """Restore the global matmul settings a test changes."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]


def test_tf32_is_switched_for_cuda_devices_only(tf32_settings):
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert set_tf32(True, torch.device("cpu")) is False
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    assert set_tf32(True, torch.device("cuda", 0)) is True
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert set_tf32(False, torch.device("cuda", 0)) is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def test_cpu_memory_window_starts_its_peak_again():
    # In a fresh process: a long-lived one (the test session) may hold freed memory that a new block reuses.
    code = """
import json, torch
from utils.train.build import memory_window
memory_window(torch.device("cpu"))  # a fresh window
before = memory_window(torch.device("cpu"))["rss_mb"]
block = torch.ones(300 * 2**20 // 4)  # 300 MiB, touched
del block
first = memory_window(torch.device("cpu"))
second = memory_window(torch.device("cpu"))
print(json.dumps([before, first, second]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, first, second = json.loads(done.stdout.splitlines()[-1])
    assert first["mem_mb"] >= before + 290, (before, first)
    assert second["mem_mb"] < first["mem_mb"] - 250, (first, second)  # the freed block is not this window's
    assert second["rss_mb"] < first["mem_mb"] - 250


def test_cuda_memory_window_reports_allocated_and_reserved_peaks_then_resets(monkeypatch):
    peaks = {"allocated": 3 * 2**30, "reserved": 5 * 2**30}

    def reset(device):
        peaks.update(allocated=0, reserved=0)

    monkeypatch.setattr(build.torch.cuda, "max_memory_allocated", lambda device: peaks["allocated"])
    monkeypatch.setattr(build.torch.cuda, "max_memory_reserved", lambda device: peaks["reserved"])
    monkeypatch.setattr(build.torch.cuda, "reset_peak_memory_stats", reset)
    first = memory_window(torch.device("cuda", 0))
    assert (first["mem_mb"], first["mem_reserved_mb"]) == (3072, 5120) and first["rss_mb"] > 0
    second = memory_window(torch.device("cuda", 0))
    assert (second["mem_mb"], second["mem_reserved_mb"]) == (0, 0)


def _run(data, out, *extra: str) -> dict:
    return lpr4m_train.main(["--dataset", "lpr4m", "--data_root", str(data / "lpr4m"), "--model_config", "tiny",
                             "--max_frames", "2", "--batch_size", "8", "--max_steps", "2", "--num_workers", "0",
                             "--log_every_steps", "1", "--no_progress", "--no_tensorboard", "--device", "cpu",
                             "--output_dir", str(out), *extra])


def test_gpu_flags_reach_the_run(small_data, tmp_path, monkeypatch):
    calls = {"tf32": [], "compile": []}
    real_tf32 = trainer.set_tf32
    monkeypatch.setattr(trainer, "set_tf32", lambda on, device: calls["tf32"].append(on) or real_tf32(on, device))
    # Compiling is slow on a CPU; the compiled encoder itself is checked by the next test.
    monkeypatch.setattr(VisionTransformer, "compile", lambda self, **kw: calls["compile"].append(kw), raising=False)
    result = _run(small_data, tmp_path / "on")
    assert calls == {"tf32": [True], "compile": []}  # TF32 on by default (a no-op on the CPU), no compile
    _run(small_data, tmp_path / "compiled", "--compile")
    assert calls["compile"] == [{"mode": "default"}]
    calls["compile"].clear()
    records = read_log(tmp_path / "on" / "log.jsonl")
    assert all({"mem_mb", "rss_mb", "skipped_files", "replaced_samples"} <= set(r) for r in records)
    assert all(r["skipped_files"] == 0 and r["mem_mb"] > 0 for r in records)
    _run(small_data, tmp_path / "off", "--no_tf32", "--compile", "--compile_mode", "max-autotune")
    assert calls["tf32"] == [True, True, False] and calls["compile"] == [{"mode": "max-autotune"}]
    saved = yaml.safe_load((tmp_path / "off" / "args.yaml").read_text())
    assert (saved["tf32"], saved["compile"], saved["compile_mode"]) == (False, True, "max-autotune")
    assert set(result["model"].state_dict()) == set(torch.load(tmp_path / "off" / "model.pt",
                                                               weights_only=True)["model"])


@pytest.mark.parametrize("flags, message", [
    (["--dist_timeout_min", "0"], "--dist_timeout_min must be > 0"),
    (["--compile_mode", "fast"], "invalid choice: 'fast'"),
    (["--compile_mode", "max-autotune"], "--compile_mode max-autotune has no effect without --compile"),
])
def test_bad_gpu_flags_are_usage_errors(small_data, tmp_path, expect_error, flags, message):
    with expect_error(message):
        _run(small_data, tmp_path / "bad", *flags)


def test_encoder_compiles_as_one_graph_forward_and_backward():
    """`--compile` must not break the encoder's graph: fullgraph=True fails on any break."""
    torch.manual_seed(0)
    eager = VisionTransformer(VISION_CONFIGS["tiny"])
    compiled = VisionTransformer(VISION_CONFIGS["tiny"])
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(fullgraph=True, backend="aot_eager")  # traces forward and backward, no code generation
    size = VISION_CONFIGS["tiny"].image_size
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    for model in (eager, compiled):
        emb, tokens = model(images, return_tokens=True)
        (emb.square().sum() + tokens.mean()).backward()
    torch.testing.assert_close(compiled(images)[0], eager(images)[0], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    # bf16 autocast: training takes the fp32 attention core on CPUs, inference the bf16 kernel; no break either way.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, tokens = compiled(images, return_tokens=True)
        (emb.float().square().sum() + tokens.float().mean()).backward()
        with torch.no_grad():
            assert compiled(images)[0].dtype == torch.bfloat16


def test_evaluation_encodes_in_bf16_on_gpus_by_default(small_data, tmp_path):
    import json

    import lpr4m_embedding_eval
    from utils.runtime.precision import eval_precision

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert (eval_precision(None, cuda), eval_precision(None, cpu)) == ("bf16", "fp32")
    assert (eval_precision("fp32", cuda), eval_precision("bf16", cpu)) == ("fp32", "bf16")  # the flag wins
    model = _run(small_data, tmp_path / "train")["model_path"]
    common = ["--data_root", str(small_data / "lpr4m"), "--ckpt_path", model, "--num_workers", "0", "--no_progress",
              "--embedding_sim"]
    lpr4m_embedding_eval.main([*common, "--output_dir", str(tmp_path / "default")])
    lpr4m_embedding_eval.main([*common, "--output_dir", str(tmp_path / "bf16"), "--precision", "bf16"])
    flags = [json.loads((tmp_path / run / "metrics.json").read_text())["flags"] for run in ("default", "bf16")]
    assert [f["precision"] for f in flags] == ["fp32", "bf16"]  # the CPU default, recorded as resolved


def test_srun_tasks_without_torchrun_are_refused(monkeypatch):
    from utils.errors import ConfigError
    from utils.runtime.distributed import init_distributed

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")  # an allocation of 8 tasks: a shell in it may run one process
    assert init_distributed("cpu").world_size == 1
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "3")  # task 3 of `srun -n 8 python lpr4m_train.py`
    with pytest.raises(ConfigError, match="one of 8 SLURM tasks without torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # one task (srun running one torchrun): fine
    assert init_distributed("cpu").world_size == 1


def test_non_main_processes_never_copy_the_model_at_a_save(monkeypatch, tmp_path):
    """Rank 1 contributes its RNG state only: no state_dict, no training state, no file."""
    from types import SimpleNamespace

    from utils.runtime.distributed import Runtime

    class Untouchable:
        def state_dict(self):
            raise AssertionError("a non-main process copied the model or optimizer")

    monkeypatch.setattr(trainer, "training_state", lambda *a, **k: Untouchable().state_dict())
    fake = SimpleNamespace(runtime=Runtime(rank=1, world_size=2), model=Untouchable(), optimizer=Untouchable(),
                           ckpt_dir=tmp_path, config_dict={}, args_dict={}, precision=None, step=1, epoch=0,
                           sample_in_epoch=8)
    trainer.Trainer._save(fake, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    fake.runtime = Runtime(rank=0, world_size=2)
    with pytest.raises(AssertionError, match="copied the model"):  # the main process does copy
        trainer.Trainer._save(fake, tmp_path / "last.pt")


def test_ddp_is_built_with_bucket_views_and_the_bf16_hook_on_request(small_data, tmp_path, monkeypatch):
    """The trainer's DDP wrapper (a one-process gloo group standing in for two processes)."""
    import socket

    import torch.distributed as dist

    from utils.runtime.distributed import Runtime
    from utils.train.params import parse_args

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    passed = []
    real = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda *args: passed.append(args[7]) or real(*args))
    try:
        for name, flags in (("plain", []), ("bf16", ["--ddp_bf16_compress", "--gradient_accumulation_steps", "2"])):
            args = parse_args(["--dataset", "lpr4m", "--data_root", str(small_data / "lpr4m"), "--model_config",
                               "tiny", "--max_frames", "2", "--batch_size", "8", "--max_steps", "1", "--num_workers",
                               "0", "--no_progress", "--no_tensorboard", "--device", "cpu", "--output_dir",
                               str(tmp_path / name), *flags])
            run = trainer.Trainer(args, Runtime(world_size=2))
            assert run.ddp.gradient_as_bucket_view
            hooks = [hook.__qualname__ for hook, _ in run.ddp._comm_hooks]
            assert hooks == (["bf16_compress_hook"] if flags else [])
            run.run()
        assert passed == [False, True]  # the gradient-cache path averages in bf16 too
    finally:
        dist.destroy_process_group()
