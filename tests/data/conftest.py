"""Fixtures of the data tests."""
import pytest

from fss_fixtures import make_fss as _make_fss


@pytest.fixture
def make_fss():
    """Factory: make_fss(root, {class: n_pairs}, size=32, seed=0) -> {class: [(image, mask)]}."""
    return _make_fss
