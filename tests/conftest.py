"""Fixtures shared by the training tests."""

import pytest

from dataloaders.synthetic import make_synthetic_dataset


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """A small synthetic dataset: 48 training pairs (4 livestreams), a validation and a test split.

    Returns the root holding lpr4m/ and movingfashion/.
    """
    root = tmp_path_factory.mktemp("small_data")
    make_synthetic_dataset(root, seed=0, num_train_lives=4, num_val_lives=2, num_test_lives=2,
                           mf_train_products=4, mf_test_products=4)
    return root
