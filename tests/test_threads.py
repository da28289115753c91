"""Thread counts are set in one place (issue 15): library code only changes torch's and FAISS's
process-wide thread counts inside blocks that restore them; a service worker's count is set by
its owner, ``lookalike.serve.run``, never by building the app."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest
import torch
from fastapi.testclient import TestClient

from lookalike import Project
from lookalike.serve.app import create_app
from lookalike.serve.run import create_worker_app
from lookalike.serve.settings import ServeSettings
from lookalike.threads import compute_threads, set_process_threads, torch_threads


@pytest.fixture()
def other_count():
    """A thread count different from the current one; the current one comes back afterwards."""
    before = torch.get_num_threads()
    yield 1 if before != 1 else 2
    torch.set_num_threads(before)


def test_scoped_counts_come_back(other_count: int) -> None:
    before, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    with torch_threads(other_count):
        assert torch.get_num_threads() == other_count
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other_count):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with compute_threads(other_count):
        assert torch.get_num_threads() == other_count
        assert faiss.omp_get_max_threads() == other_count
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (before, before_faiss)


def test_set_process_threads_leaves_zero_alone(other_count: int) -> None:
    before = torch.get_num_threads()
    set_process_threads(0)
    set_process_threads(None)
    assert torch.get_num_threads() == before
    set_process_threads(other_count)
    assert torch.get_num_threads() == other_count


def test_building_and_starting_an_app_leaves_threads_alone(tmp_path: Path,
                                                           other_count: int) -> None:
    Project(tmp_path / "shop").close()
    before = torch.get_num_threads()
    settings = ServeSettings(project=tmp_path / "shop", read_only=True,
                             torch_threads=other_count)
    with TestClient(create_app(settings)) as client:  # runs the start-up (lifespan)
        assert client.get("/v1/health").status_code == 200
        assert torch.get_num_threads() == before


def test_a_worker_sets_its_threads(tmp_path: Path, other_count: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    Project(tmp_path / "shop").close()
    monkeypatch.setenv("LOOKALIKE_PROJECT", str(tmp_path / "shop"))
    monkeypatch.setenv("LOOKALIKE_READ_ONLY", "true")
    monkeypatch.setenv("LOOKALIKE_TORCH_THREADS", str(other_count))
    app = create_worker_app()
    assert torch.get_num_threads() == other_count
    assert app.state.settings.torch_threads == other_count
