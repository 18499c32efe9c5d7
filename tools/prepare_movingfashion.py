"""Extract 1-fps frames from the MovingFashion videos and write the annotations the loaders read.

    python tools/prepare_movingfashion.py --root /data/MovingFashion

Reads ROOT/train.json and ROOT/test.json, decodes ROOT/videos/*.mp4 with PyAV, writes
ROOT/frames/<video>/<video>-NNNN.jpg and ROOT/annotations/video_frames.json. Resumable:
videos finished by an earlier run are skipped.
"""
import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.movingfashion import prepare_movingfashion  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="MovingFashion release folder (videos/, imgs/, train.json, test.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = prepare_movingfashion(args.root, progress=True)
    print(f"extracted {result['extracted']} videos, skipped {result['skipped']} already done, "
          f"{len(result['failed'])} failed" + (f": {result['failed'][:5]}" if result["failed"] else ""))
    return result


if __name__ == "__main__":
    main()
