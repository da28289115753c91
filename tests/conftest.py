"""Shared fixtures: where the real data lives, and one real Milvus server per session.

The products Parquet is looked up the way the library does (LOOKALIKE_PRODUCTS_PARQUET, then
../shared/data/ above the working directory); a test that needs it fails with a clear message
when it is missing rather than skipping itself into green.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Milvus standalone server (PyPI ``milvus``) on a free port, its data in tmp; started
    on first use, shared by every test of the session and stopped at the end."""
    from lookalike.index.milvus_server import LocalMilvus

    server = LocalMilvus(tmp_path_factory.mktemp("milvus-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray (2 CPUs, small object store) for one test module, shut down after."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
