"""How many threads torch and FAISS use: the one module that sets them.

torch's and FAISS's thread counts are process-wide. Library code never changes them for good:
a step that needs a given count (training with ``threads=``, an embedder with ``num_threads``,
a timed comparison) runs inside :func:`torch_threads` / :func:`compute_threads`, which restore
the previous setting when the block ends. The only lasting setting is
:func:`set_process_threads`, called by whoever owns the process: ``lookalike.serve.run`` once
per service worker (``--torch-threads``); benchmarks set their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` torch intra-op threads inside the block only (None: leave it alone)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(count)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """torch and FAISS use ``threads`` threads inside the block; the old settings come back."""
    import faiss
    import torch

    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)


def set_process_threads(torch_count: int | None) -> None:
    """Set torch's intra-op threads for the rest of this process (0 or None: leave as is).

    For a process's entry point only (a service worker at start-up), never for library code.
    """
    if torch_count:
        import torch

        torch.set_num_threads(int(torch_count))
