"""Per-epoch validation during training: retrieval on the VALIDATION split.

The LPR750K release ships `training_videoinfo_val.txt`, pairs in the training
format. For validation each pair's clip becomes a query whose ground truth is
its image, and the distinct images of each livestream form that livestream's
gallery, the per-livestream protocol of the LPR4M test set (SPEC §2). The
test split is never used here. The MovingFashion release has no validation
split.
"""

from __future__ import annotations

from dataloaders import DataError, GalleryImage, Query, RetrievalSplit, live_id_of, load_lpr4m_train
from utils.evaluation import retrieve
from utils.features import Runtime


def load_validation_split(dataset: str, data_root, index=None, max_queries: int | None = None) -> RetrievalSplit:
    """Queries and per-livestream galleries from the validation pairs.

    `max_queries` keeps the first N clips (file order); the galleries of their
    livestreams stay whole, so R@k keeps its meaning.
    """
    if dataset == "movingfashion":
        raise DataError("the MovingFashion release has no validation split; validate on an LPR4M-layout dataset "
                        "or train without --validate")
    pairs = load_lpr4m_train(data_root, "val", index=index)
    gallery: dict[tuple[str, str], GalleryImage] = {}
    queries = []
    for pair in pairs:
        live = live_id_of(pair.clip_id)
        gallery.setdefault((live, pair.image_id), GalleryImage(pair.image_id, pair.image_path, live))
        queries.append(Query(pair.clip_id, pair.frame_paths, [pair.image_id], live))
    if max_queries is not None:
        queries = queries[:max_queries]
        lives = {q.group for q in queries}
        gallery = {key: image for key, image in gallery.items() if key[0] in lives}
    return RetrievalSplit(queries=queries, gallery=list(gallery.values()), per_group=True)


def validate(model, split: RetrievalSplit, runtime: Runtime, *, max_frames: int, batch_size: int,
             num_workers: int, rerank: bool, rerank_topk: int = 5) -> dict:
    """R1/R5/R10 (percent) by embedding and, with `rerank`, after PMD re-ranking of the top K.

    Every process of the group must call this. The model is evaluated with
    dropout off and goes back to the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        found = retrieve(model, split, runtime, max_frames=max_frames, batch_size=batch_size,
                         num_workers=num_workers, rerank_topk=rerank_topk if rerank else None, where="validation")
    finally:
        model.train(was_training)
    keep = ("R1", "R5", "R10")
    return {name: {k: metrics[k] for k in keep} for name, metrics in found.results.items()}
