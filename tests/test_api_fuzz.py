"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis).

Every operation of the served schema gets a bounded number of generated requests -- valid and
invalid parameters, odd strings, huge numbers, wrong types, with and without the API key -- over
real HTTP against a real project; no answer may be a 5xx. Bounded: a few examples per operation,
no shrinking, a time limit for the whole module.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from lookalike import Project
from lookalike.serve.app import create_app
from lookalike.serve.run import BackgroundServer
from lookalike.serve.settings import ServeSettings

API_KEY = "fuzz-key-0123456789abcdef"
MAX_EXAMPLES = 20  # per operation, mode and key: ~800 requests in all

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fuzz_project(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    frame = pd.read_parquet(products_parquet).sort_values("id").iloc[:120]
    manifest = folder / "m.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "gender": frame["gender"], "colour": frame["base_colour"],
                  "price": (frame["id"] % 97 + 3).astype(float)}).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("pixels", progress=False)
    project.close()
    return folder / "project"


@pytest.fixture(scope="module")
def server_url(fuzz_project: Path) -> Iterator[str]:
    settings_ = ServeSettings(project=fuzz_project, api_key=API_KEY, max_upload_bytes=256 * 1024)
    with BackgroundServer(create_app(settings_)) as server:
        yield server.url


@pytest.fixture(scope="module")
def api_schema(server_url: str) -> schemathesis.BaseSchema:
    """The schema exactly as the running service serves it."""
    return schemathesis.openapi.from_url(server_url + "/v1/openapi.json")


# schemathesis' own pytest plugin (schema.parametrize / from_fixture) does not run under
# pytest 9, so each test drives Hypothesis itself: one bounded run per operation.
@pytest.mark.parametrize("with_key", [False, True], ids=["anonymous", "api-key"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid-requests", "invalid-requests"])
def test_no_server_errors(api_schema: schemathesis.BaseSchema, server_url: str,
                          mode: GenerationMode, with_key: bool) -> None:
    headers = {"X-API-Key": API_KEY} if with_key else {}
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10  # every endpoint of the schema is fuzzed
    calls = 0
    unsatisfiable: list[str] = []

    for operation in operations:
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            response = case.call(base_url=server_url, headers=headers, timeout=60)
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} path={case.path_parameters} "
                                f"query={case.query} -> {response.status_code} "
                                f"{response.text[:200]}")
            else:  # and every answer is JSON or an image, errors in the documented shape
                kind = (response.headers.get("content-type") or [""])[0]  # header -> values
                assert kind.startswith(("application/json", "image/")), kind
                if response.status_code >= 400:
                    assert set(response.json()) == {"error"}, response.text[:200]

        try:
            check()
        except Unsatisfiable:
            # No invalid request exists for an operation without parameters (GET /v1/health).
            assert mode is GenerationMode.NEGATIVE, operation.label
            unsatisfiable.append(operation.label)
    assert len(unsatisfiable) <= 4, unsatisfiable
    assert calls >= (len(operations) - len(unsatisfiable)) * 3
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid-requests", "invalid-requests"])
def test_no_server_errors_on_real_items(api_schema: schemathesis.BaseSchema, server_url: str,
                                        fuzz_project: Path, mode: GenerationMode) -> None:
    """Random ids rarely exist, so fuzz the item routes again with real ids: the filters, k and
    everything else still come from the generator."""
    project = Project(fuzz_project, create=False, read_only=True)
    real_ids = project.store.ids()[:3]
    project.close()
    failures: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    item_reads = [op for op in operations if op.method.lower() == "get" and "{item_id}" in op.path]
    assert len(item_reads) == 4  # details, image, similar, duplicates

    for operation in item_reads:
        for item_id in real_ids:
            @settings(max_examples=MAX_EXAMPLES // 2, deadline=None, database=None,
                      derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode,
                                              path_parameters={"item_id": item_id}))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=server_url, timeout=60)
                statuses.append(response.status_code)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path} {case.path_parameters} "
                                    f"query={case.query} -> {response.status_code} "
                                    f"{response.text[:200]}")

            try:
                check()
            except Unsatisfiable:  # nothing to break once the id is fixed (no query string)
                assert mode is GenerationMode.NEGATIVE and not operation.path.endswith(
                    "/similar"), operation.label
    assert not failures, "\n".join(failures[:10])
    assert len(statuses) >= 3 * len(real_ids)
    if mode is GenerationMode.POSITIVE:
        assert statuses.count(200) >= len(statuses) // 4  # the real ids were really used


def test_fuzzing_left_the_catalogue_usable(fuzz_project: Path, server_url: str) -> None:
    """Whatever the fuzzer wrote, the project still opens and answers queries."""
    copy = fuzz_project.parent / "after"
    shutil.copytree(fuzz_project, copy, dirs_exist_ok=True)
    project = Project(copy, create=False, read_only=True)
    some_id = project.store.ids()[0]
    assert len(project.similar(some_id, k=3)) == 3
