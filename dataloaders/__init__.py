"""Datasets, frame sampling, transforms and synthetic data for RICE (see CONTRACTS §4)."""
from .datasets import (ClipDataset, ImageDataset, PairDataset, SkipReport, collate_clips,
                       collate_images, collate_pairs, collate_samples)
from .lpr4m import load_lpr4m_test, load_lpr4m_train
from .movingfashion import load_movingfashion_test, load_movingfashion_train, prepare_movingfashion
from .records import DataError, GalleryImage, Query, RetrievalSplit, TrainPair, live_id_of
from .sampling import eval_frame_indices, pad_frames, train_frame_indices
from .transforms import CLIP_MEAN, CLIP_STD, build_transform, load_rgb
