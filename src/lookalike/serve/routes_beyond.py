"""REST routes beyond the photo: catalogue clusters and near-duplicates.

``router`` is an :class:`fastapi.APIRouter`; the app mounts it with ``app.include_router(router)``.
Every route reads through the service's read-only project (``request.app.state.service``), so
the routes never write: clusters and duplicate reports are computed by the CLI
(``lookalike clusters`` / ``lookalike duplicates``) and served from the project directory.

Words queries are options of the main routes: ``POST /v1/search`` takes ``text`` (with or
without an image) and ``GET /v1/items/{id}/similar`` takes ``text`` / ``with_title``.

* ``GET /v1/clusters`` -- the saved clusters, each with its most central items (for browsing).
* ``GET /v1/clusters/{cluster}`` -- one cluster's most central items.
* ``GET /v1/duplicates?method=copies`` -- the saved near-duplicate groups.
* ``GET /v1/items/{id}/duplicates`` -- catalogue items that are near-duplicates of one item.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from lookalike.api import UnknownItemError, UnknownNameError
from lookalike.serve.deps import image_url, project_of
from lookalike.serve.security import ApiError

router = APIRouter(tags=["beyond the photo"])


class ClusterItem(BaseModel):
    id: str
    title: str | None = None
    category: str | None = None
    image_url: str


class Cluster(BaseModel):
    cluster: int
    size: int = Field(description="Items in the cluster.")
    label: str | None = Field(None, description="The most common category of its central items.")
    items: list[ClusterItem] = Field(description="The items closest to the centroid, best first.")


class ClusterList(BaseModel):
    k: int
    index: str
    purity: dict[str, float] = Field(default_factory=dict)
    nmi: dict[str, float] = Field(default_factory=dict)
    clusters: list[Cluster]


class DuplicateGroupOut(BaseModel):
    distance: float = Field(description="Largest pair distance in the group (bits, or "
                                        "1 - cosine).")
    items: list[ClusterItem]


class DuplicateList(BaseModel):
    method: str
    threshold: float
    n_groups: int
    groups: list[DuplicateGroupOut]


class DuplicateMatch(BaseModel):
    id: str
    distance: float


class DuplicateMatches(BaseModel):
    item: str
    method: str
    duplicates: list[DuplicateMatch]


def _cells(project, ids: list[str]) -> list[ClusterItem]:
    found = project.store.find(ids)
    return [ClusterItem(id=i, title=found[i].title, category=found[i].category,
                        image_url=image_url(i)) for i in ids if i in found]


@router.get("/v1/clusters", response_model=ClusterList, summary="Browse catalogue clusters")
def list_clusters(
        request: Request,
        per_cluster: Annotated[int, Query(ge=1, le=50, description="Items per cluster.")] = 8,
        limit: Annotated[int, Query(ge=1, le=1000, description="Clusters, largest first.")] = 50
) -> ClusterList:
    """The saved K-means clusters of the default index, largest first, each with its most
    central items (a click on one starts more-like-this). No clusters saved yet is an empty list
    (``k`` = 0), not an error, so the page can ask without logging a failed request."""
    project = project_of(request)
    try:
        report = project.load_clusters().report
    except UnknownNameError:
        return ClusterList(k=0, index=project.default_index_name() or "", clusters=[])
    order = sorted(range(report["k"]), key=lambda c: -report["sizes"][c])[:limit]
    clusters = []
    for cluster in order:
        cells = _cells(project, report["central"][cluster][:per_cluster])
        clusters.append(Cluster(cluster=cluster, size=report["sizes"][cluster],
                                label=_label(cells), items=cells))
    return ClusterList(k=report["k"], index=report["index"], purity=report.get("purity", {}),
                       nmi=report.get("nmi", {}), clusters=clusters)


@router.get("/v1/clusters/{cluster}", response_model=Cluster, summary="One cluster")
def get_cluster(request: Request,
                cluster: Annotated[int, PathParam(ge=0, le=100_000)],
                per_cluster: Annotated[int, Query(ge=1, le=50)] = 20) -> Cluster:
    """One cluster's most central items."""
    report = _saved_clusters(request).report
    if cluster >= report["k"]:
        raise ApiError(404, "not_found", f"no cluster {cluster}; there are {report['k']}")
    cells = _cells(project_of(request), report["central"][cluster][:per_cluster])
    return Cluster(cluster=cluster, size=report["sizes"][cluster], label=_label(cells),
                   items=cells)


def _saved_clusters(request: Request):
    try:
        return project_of(request).load_clusters()
    except UnknownNameError:
        raise ApiError(404, "not_found", "no clusters yet; run `lookalike clusters`") from None


def _label(cells: list[ClusterItem]) -> str | None:
    labels = [c.category for c in cells if c.category]
    return max(set(labels), key=labels.count) if labels else None


@router.get("/v1/duplicates", response_model=DuplicateList, summary="Near-duplicate groups")
def list_duplicates(
        request: Request,
        method: Annotated[str, Query(pattern="^(copies|phash\\+colour|phash|embedding)$")] = "copies",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> DuplicateList:
    """The near-duplicate groups last found by ``lookalike duplicates --method METHOD``."""
    project = project_of(request)
    try:
        report = project.duplicate_report(method)
    except UnknownNameError as error:
        raise ApiError(404, "not_found", str(error)) from None
    groups = [DuplicateGroupOut(distance=g["distance"], items=_cells(project, g["ids"][:20]))
              for g in report["groups"][:limit]]
    return DuplicateList(method=report["method"], threshold=report["threshold"],
                         n_groups=len(report["groups"]), groups=groups)


@router.get("/v1/items/{item_id}/duplicates", response_model=DuplicateMatches,
            summary="Near-duplicates of an item")
async def item_duplicates(
        request: Request,
        item_id: Annotated[str, PathParam(min_length=1, max_length=256)],
        method: Annotated[str, Query(pattern="^(copies|phash\\+colour|phash|embedding)$")] = "copies"
) -> DuplicateMatches:
    """Catalogue items that are near-duplicates of this item's photo (itself left out)."""
    project = project_of(request)

    def find() -> list[tuple[str, float]]:
        if item_id not in project.store:
            raise UnknownItemError(f"unknown item {item_id!r}")
        return project.find_duplicates(project.store.image_path(item_id), method=method)

    matches = await run_in_threadpool(find)
    return DuplicateMatches(item=item_id, method=method, duplicates=[
        DuplicateMatch(id=i, distance=d) for i, d in matches if i != item_id])


__all__ = ["router"]
