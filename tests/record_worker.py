"""Run by the shard tests under torchrun: train while recording the samples of every step.

    torchrun ... tests/record_worker.py RECORD_DIR <lpr4m_train.py arguments>

Each process appends one line per optimizer step to RECORD_DIR/rank<R>.txt: the sample
indices of its batch, written and flushed before the step runs, so a killed run keeps
the record of every step it began.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import lpr4m_train
    from utils.train import trainer

    record_dir = Path(sys.argv[1])
    record_dir.mkdir(parents=True, exist_ok=True)
    record = open(record_dir / f"rank{os.environ.get('RANK', '0')}.txt", "a", encoding="utf-8")
    real_step = trainer.train_step

    def recorded_step(model, batch, *rest):
        record.write(" ".join(map(str, batch["index"].tolist())) + "\n")
        record.flush()
        return real_step(model, batch, *rest)

    trainer.train_step = recorded_step
    lpr4m_train.main(sys.argv[2:])


if __name__ == "__main__":
    main()
