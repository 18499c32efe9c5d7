"""Index img2dataset shard folders so the LPR4M loaders find frames and images by id.

    python tools/index_img2dataset.py --output lpr4m_index.tsv /data/lpr4m_frames /data/lpr4m_images

Each shard sample `00000/000000001.jpg` has a `.json` whose "url" ends in `<frame_id>.jpg` or
`<image_id>.jpg`; the index maps that id to the file. Pass the index to the loaders
(`load_lpr4m_train(..., index=PATH)`, `load_lpr4m_test(..., index=PATH)`).
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataloaders.img2dataset_index import build_img2dataset_index  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", help="img2dataset output folders (holding 00000/, 00001/, ... or, in "
                   "webdataset format, 00000.tar, 00001.tar, ...)")
    p.add_argument("--output", required=True, help="index file to write (TSV)")
    args = p.parse_args(argv)
    counts = build_img2dataset_index(args.roots, args.output, progress=True)
    print(f"indexed {counts['indexed']} files into {args.output}; {counts['missing_file']} samples without "
          f"a file, {counts['duplicates']} duplicate ids, {counts['bad_json']} unreadable .json")
    return counts


if __name__ == "__main__":
    main()
