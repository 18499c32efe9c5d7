"""The data: annotation readers, records, frame sampling, transforms, torch datasets, synthetic data.

Import the submodule you need (`from dataloaders.datasets import PairDataset`);
this package imports nothing itself, so reading a command line's flags stays fast.
Layouts on disk: docs/data.md. The named data sets: `dataloaders.registry`.
"""
