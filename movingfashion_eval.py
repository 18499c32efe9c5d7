"""Evaluate a RICE checkpoint on the MovingFashion test set (one global gallery).

    python movingfashion_eval.py --data_root /movingfashion --n_gpu 2 \
        --sim_header mean_pooling --one_stage --embedding_sim --ckpt_path ckpt.bin

The data root must have been prepared once (frames at 1 fps, see tools/prepare_movingfashion.py).
All flags: `python movingfashion_eval.py --help`; the work is in utils/eval/.
"""

from utils.eval.cli import main_for


def main(argv: list[str] | None = None) -> dict | None:
    return main_for("movingfashion", argv)


if __name__ == "__main__":
    main()
