"""Run by the torchrun tests: train, then write a digest of this rank's final weights.

    torchrun ... tests/train_worker.py DIGEST_DIR <lpr4m_train.py arguments>

Each process writes DIGEST_DIR/rank<R>.txt holding the sha256 of its model's
tensors (names and bytes, in order), so a test can check that every process
ended with identical weights.
"""

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    import os

    import lpr4m_train

    digest_dir = Path(sys.argv[1])
    result = lpr4m_train.main(sys.argv[2:])
    digest_dir.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    (digest_dir / f"rank{rank}.txt").write_text(
        f"{weights_digest(result['model'])} {result['step']} {os.environ.get('WORLD_SIZE', '1')}\n")


if __name__ == "__main__":
    main()
