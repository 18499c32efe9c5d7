"""Index img2dataset shard folders: frame_id / image_id -> file path (docs/data.md).

img2dataset writes `<root>/00000/000000001.jpg` next to `000000001.json`, whose "url" ends in
`<frame_id>.jpg` (frames) or `<image_id>.jpg` (shop images). The index lets the LPR4M loaders
use those files where they are, without renaming or moving anything.

Index file (TSV, UTF-8):
    #root<TAB>0<TAB>/abs/path/to/frames_shards
    #root<TAB>1<TAB>/abs/path/to/images_shards
    <id><TAB><root number><TAB><path relative to that root>
"""
import json
import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm import tqdm

from utils.errors import DataError


def id_from_url(url: str) -> str:
    """'https://host/a/b/<id>.jpg?x=1' -> '<id>' (the file name without its extension)."""
    name = PurePosixPath(urlparse(url).path).name
    return name.rsplit(".", 1)[0] if "." in name else name


def build_img2dataset_index(roots: list[str | os.PathLike], output: str | os.PathLike,
                            progress: bool = True) -> dict:
    """Scan shard folders and write the TSV index. Returns counts.

    A sample whose image file is absent (failed download) is left out; an id seen twice keeps
    its first file. Returns {"indexed", "missing_file", "duplicates", "bad_json"}.
    """
    roots = [Path(r).resolve() for r in roots]
    for root in roots:
        if not root.is_dir():
            raise DataError(f"img2dataset folder {root} does not exist")
    counts = {"indexed": 0, "missing_file": 0, "duplicates": 0, "bad_json": 0}
    seen: set[str] = set()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for number, root in enumerate(roots):
            out.write(f"#root\t{number}\t{root}\n")
        for number, root in enumerate(roots):
            metas = sorted(root.glob("*/*.json"))
            for meta in tqdm(metas, desc=f"indexing {root.name}", disable=not progress):
                try:
                    url = json.loads(meta.read_text(encoding="utf-8"))["url"]
                except (ValueError, KeyError, TypeError):
                    counts["bad_json"] += 1
                    continue
                image = meta.with_suffix(".jpg")
                if not image.is_file():
                    counts["missing_file"] += 1
                    continue
                key = id_from_url(url)
                if key in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(key)
                out.write(f"{key}\t{number}\t{image.relative_to(root).as_posix()}\n")
                counts["indexed"] += 1
    os.replace(tmp, output)
    return counts


def load_img2dataset_index(path: str | os.PathLike) -> dict[str, str]:
    """Read a TSV index written by `build_img2dataset_index` -> {id: absolute path}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"img2dataset index {path} not found; build it with tools/index_img2dataset.py")
    roots: dict[str, str] = {}
    index: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields, got {len(fields)}")
            if fields[0] == "#root":
                roots[fields[1]] = fields[2]
            elif fields[1] not in roots:
                raise DataError(f"{path}:{lineno}: unknown root number {fields[1]!r}")
            else:
                index[fields[0]] = os.path.join(roots[fields[1]], fields[2])
    return index
