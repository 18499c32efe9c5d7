"""benchmarks/gpu_check.sh parses, and without a GPU stops at once with one clear line."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_gpu_check_without_a_gpu_is_one_line_error(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}  # hides any GPU
    results = tmp_path / "results.txt"
    proc = subprocess.run(["bash", str(SCRIPT), str(results)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: gpu_check.sh needs a CUDA GPU, and PyTorch sees none (check "
                                        "nvidia-smi, CUDA_VISIBLE_DEVICES and that torch is a CUDA build)"]
    assert proc.stdout == "" and not results.exists()  # nothing measured, nothing written


def test_time_limits_of_the_parts_add_up_to_under_ten_minutes():
    """Every part runs under `timeout`; their limits (the training part once per precision) bound the script."""
    import re

    text = SCRIPT.read_text()
    limits = [int(m.group(1)) for m in re.finditer(r"^\s*if part (?!\"train_)\S+ (\d+) ", text, flags=re.M)]
    precisions = re.search(r"^for precision in ([^;]+);", text, flags=re.M).group(1).split()
    train = [int(m.group(1)) for m in re.finditer(r'part "train_\$precision" (\d+) ', text)]
    assert len(train) == 1 and len(limits) >= 5, (limits, train)
    assert sum(limits) + train[0] * len(precisions) <= 600, (limits, train, precisions)
