"""Fixtures shared by the tests."""

import contextlib
import re

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


@pytest.fixture
def expect_error(capsys):
    """`with expect_error("pattern"): main([...])`: the call exits with code 2 and `pattern` on stderr.

    Errors the user can cause (utils.errors.RiceError) come out as ONE line
    `error: ...`; argparse usage errors as usage plus `...: error: ...`.
    """

    @contextlib.contextmanager
    def check(pattern: str):
        with pytest.raises(SystemExit) as exited:
            yield
        err = capsys.readouterr().err
        assert exited.value.code == 2, f"exit code {exited.value.code}, stderr: {err}"
        assert re.search(pattern, err), f"{pattern!r} not in stderr: {err}"
        assert "Traceback" not in err, err

    return check


@pytest.fixture
def pmd_decoder_chunks(monkeypatch):
    """The number of pairs of every PMD decoder call made while the test runs, in order."""
    from modules.heads import PairwiseMatchingDecoder

    chunks = []
    real = PairwiseMatchingDecoder.decode

    def spy(self, queries, keys, video_mask, video_index=None, image_index=None):
        chunks.append(len(video_index))
        return real(self, queries, keys, video_mask, video_index, image_index)

    monkeypatch.setattr(PairwiseMatchingDecoder, "decode", spy)
    return chunks
