"""Evaluate a RICE checkpoint on the LPR4M test set (one gallery per livestream).

    python lpr4m_embedding_eval.py --data_root /lpr4m --n_gpu 2 \
        --sim_header mean_pooling --one_stage --embedding_sim --ckpt_path ckpt.bin

All flags: `python lpr4m_embedding_eval.py --help`; the work is in utils/eval/.
"""

from utils.eval.cli import main_for


def main(argv: list[str] | None = None) -> dict | None:
    return main_for("lpr4m", argv)


if __name__ == "__main__":
    main()
