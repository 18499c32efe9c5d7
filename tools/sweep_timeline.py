"""Choose the recogniser's timeline settings on a labelled livestream: one scoring pass per window length,
then every threshold and switching cost on those scores.

    python tools/sweep_timeline.py --data demo_output/livestream/data --ckpt demo_output/runs/ICL/model.pt

--data is a folder written by tools/make_synthetic_livestream.py (live.mp4, shop/, schedule.json). Prints a
markdown table of per-second accuracy and segment F1 (recognition/scoring.py) for each setting, and the
chance levels; the last line names the best setting by accuracy + F1.
"""
import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with live.mp4, shop/ and schedule.json")
    p.add_argument("--ckpt", required=True, help="checkpoint (any format recognize_livestream.py reads)")
    p.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8], help="window lengths, frames")
    p.add_argument("--stride", type=int, default=1, help="frames between window starts (default: 1)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7], help="no-product thresholds")
    p.add_argument("--switch_costs", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0], help="switching costs")
    p.add_argument("--fps", type=float, default=1.0, help="sampling rate (default: 1)")
    p.add_argument("--precision", default="fp32", help="fp32 / bf16 (default: fp32)")
    args = p.parse_args(argv)

    from recognition.api import Recognizer
    from recognition.livestream import score_livestream
    from recognition.scoring import score
    from recognition.timeline import build_timeline

    data = Path(args.data)
    schedule = json.loads((data / "schedule.json").read_text())
    rec = Recognizer.load(args.ckpt, device="cpu", precision=args.precision)
    rows = []
    for window in args.windows:
        done = score_livestream(rec, data / "live.mp4", data / "shop", fps=args.fps, window=window,
                                stride=min(args.stride, window), progress=False)
        for threshold in args.thresholds:
            for cost in args.switch_costs:
                r = score(schedule, build_timeline(done.windows, threshold, cost))
                rows.append({"window": window, "threshold": threshold, "switch_cost": cost, **r})
    print("| window | threshold | switch cost | per-second accuracy | segment F1 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['window']} | {r['threshold']} | {r['switch_cost']} | {r['accuracy']:.1f} | {r['segment_f1']:.1f} |")
    r = rows[0]
    print(f"chance: accuracy {r['chance_accuracy_majority']:.1f} (most common label), "
          f"{r['chance_accuracy_uniform']:.1f} (random label); segment F1 with shuffled labels about "
          f"{sum(x['chance_segment_f1'] for x in rows) / len(rows):.1f}")
    best = max(rows, key=lambda x: x["accuracy"] + x["segment_f1"])
    print(f"best window={best['window']} threshold={best['threshold']} switch_cost={best['switch_cost']} "
          f"accuracy={best['accuracy']:.2f} segment_f1={best['segment_f1']:.2f}")
    return rows


if __name__ == "__main__":
    main()
