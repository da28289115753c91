"""Shared fixtures: where the real data lives.

The products Parquet is looked up the way the library does (LOOKALIKE_PRODUCTS_PARQUET, then
../shared/data/ above the working directory); a test that needs it fails with a clear message
when it is missing rather than skipping itself into green.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.catalogue.sources import find_products_parquet


@pytest.fixture(scope="session")
def products_parquet() -> Path:
    path = find_products_parquet()
    if path is None:
        pytest.fail("the real products Parquet was not found: set LOOKALIKE_PRODUCTS_PARQUET or "
                    "place shared/data/fashion-products-small.parquet beside the repository")
    return path


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    path = Path("/usr/share/datasets/fashion-mnist")
    if not (path / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: `apt-get install dataset-fashion-mnist` "
                    "(make test does this)")
    return path
