"""Score a recognised timeline against a known schedule: per-second accuracy and segment F1, beside chance.

    python tools/score_timeline.py --schedule data/livestream/schedule.json --timeline out/timeline.json

Metrics and chance levels: recognition/scoring.py (docs/livestream.md). The
last line holds every figure as key=value.
"""
import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognition.scoring import score  # noqa: E402
from utils.errors import DataError, one_line_errors  # noqa: E402


def _read(path: str, key: str, flag: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{flag} {path}: cannot read it as JSON ({err})") from None
    if not isinstance(data, dict) or key not in data:
        raise DataError(f"{flag} {path}: no '{key}' entry; pass the file tools/make_synthetic_livestream.py "
                        "(schedule.json) or recognize_livestream.py (timeline.json) wrote")
    return data


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedule", required=True, help="schedule.json of the synthetic livestream")
    p.add_argument("--timeline", required=True, help="timeline.json written by recognize_livestream.py")
    args = p.parse_args(argv)
    with one_line_errors():
        schedule = _read(args.schedule, "segments", "--schedule")
        timeline = _read(args.timeline, "segments", "--timeline")
        result = score(schedule, timeline["segments"])
    print(f"per-second accuracy {result['accuracy']:.1f} % (chance: {result['chance_accuracy_majority']:.1f} % "
          f"always the most common label, {result['chance_accuracy_uniform']:.1f} % a random label)")
    print(f"segment F1 at tIoU 0.5 {result['segment_f1']:.1f} % (precision {result['segment_precision']:.1f}, "
          f"recall {result['segment_recall']:.1f}; {result['predicted_segments']} predicted, "
          f"{result['true_segments']} true segments; chance with shuffled labels {result['chance_segment_f1']:.1f} %)")
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
