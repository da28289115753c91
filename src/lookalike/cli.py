"""The ``lookalike`` command: a thin Typer layer over the public API (:mod:`lookalike.api`:
:class:`~lookalike.project.Project` and a few plain functions); it calls nothing else.

Every command takes ``--project DIR``; query and evaluation commands take ``--json``. Errors that
a user can cause print one line and exit with status 1; nothing else is printed to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lookalike.commands import beyond as beyond_commands
from lookalike.commands import personal as personal_commands
from lookalike.commands import report as report_commands
from lookalike.commands import train as train_commands
from lookalike.commands.common import (
    CategoryOption,
    ColourOption,
    GenderOption,
    IndexOption,
    JsonOption,
    KOption,
    PriceMaxOption,
    PriceMinOption,
    ProjectOption,
    WhereOption,
    err,
    out,
    parse_option,
    user_errors,
)
from lookalike.commands.common import filters_of as _filters
from lookalike.commands.common import print_answer as _print_answer
from lookalike.api import DEFAULT_EMBEDDER, DEFAULT_PROJECT_DIR, LookalikeError, Project

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lookalike: visual product recommendation from a catalogue of photos.")


@app.command()
@user_errors
def ingest(source: Annotated[str, typer.Argument(help="A folder, a manifest (.csv/.jsonl/.parquet) or a named catalogue: demo, products, fashion-mnist.")],
           on_duplicate: Annotated[str, typer.Option("--on-duplicate", help="Incoming near-duplicates of catalogue images: keep, warn (keep and list them) or skip (reject them).")] = "keep",
           duplicate_threshold: Annotated[Optional[float], typer.Option("--duplicate-threshold", help="copies: smallest texture correlation (default 0.94); phash+colour: most hash bits of 64 that may differ (default 8).")] = None,
           duplicate_method: Annotated[str, typer.Option("--duplicate-method", help="How near-duplicates are found: copies (default) or phash+colour.")] = "copies",
           strict: Annotated[bool, typer.Option("--strict", help="Refuse a manifest that repeats an id (ingest nothing) instead of rejecting the repeated rows.")] = False,
           project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Add images and their attributes to the catalogue (incremental, resumable)."""
    report = Project(project).ingest(source, progress=not as_json,
                                     on_duplicate_image=on_duplicate,
                                     duplicate_threshold=duplicate_threshold,
                                     duplicate_method=duplicate_method, strict=strict)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    out.print(f"ingested {source}: {report.added} added, {report.updated} updated, "
              f"{report.unchanged} unchanged, {len(report.rejected)} rejected")
    for stem, ids in list(report.name_collisions.items())[:20]:
        out.print(f"  {len(ids)} files share the name {stem}: ids {', '.join(ids)}",
                  highlight=False, soft_wrap=True)
    for dup in report.duplicates[:20]:
        verb = "skipped" if dup["skipped"] else "warning:"
        out.print(f"  {verb} {dup['id']} is a near-duplicate of {dup['duplicate_of']} "
                  f"(distance {dup['distance']:g})", highlight=False)
    if len(report.duplicates) > 20:
        out.print(f"  ... and {len(report.duplicates) - 20} more near-duplicates (--json)")
    for reject in report.rejected[:20]:
        out.print(f"  rejected {reject.source}: {reject.reason}: {reject.message}", highlight=False)
    if len(report.rejected) > 20:
        out.print(f"  ... and {len(report.rejected) - 20} more (`lookalike rejects`)")


@app.command()
@user_errors
def rejects(project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """List every file an ingest rejected, with the reason."""
    items = Project(project, create=False).rejects()
    if as_json:
        out.print_json(json.dumps({"rejects": [r.__dict__ for r in items]}))
        return
    for r in items:
        out.print(f"{r.source}\t{r.reason}\t{r.message}", highlight=False)


@app.command("index")
@user_errors
def index_command(
        embedder: Annotated[str, typer.Option("--embedder", "-e", help="Registry name or a saved model folder.")] = DEFAULT_EMBEDDER,
        kind: Annotated[str, typer.Option("--kind", help="Index type: auto, exact, hnsw, ...")] = "auto",
        name: Annotated[str, typer.Option("--name", help="Index name.")] = "default",
        image_size: Annotated[Optional[int], typer.Option("--image-size", help="Input size for CNN embedders.")] = None,
        precision: Annotated[Optional[str], typer.Option("--precision", help="efficientnet-lite0: int8 (default; used where this CPU's self-check passes, else fp32) or fp32.")] = None,
        option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Embedder setting KEY=VALUE (repeatable), e.g. precision=fp32, resize=pad.")] = None,
        text_column: Annotated[Optional[list[str]], typer.Option("--text-column", help="Also embed this text column (e.g. title) for words queries (repeatable); kept up to date afterwards.")] = None,
        engine: Annotated[str, typer.Option("--engine", help="Where to embed: local (this process) or ray (Ray Data actors).")] = "local",
        address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (default: start a local Ray).")] = None,
        num_actors: Annotated[Optional[int], typer.Option("--num-actors", min=1, help="Ray model replicas (default: one per CPU).")] = None,
        uri: Annotated[Optional[str], typer.Option("--uri", help="Milvus server for --kind milvus (default: $LOOKALIKE_MILVUS_URI).")] = None,
        collection: Annotated[Optional[str], typer.Option("--collection", help="Milvus collection for --kind milvus (default: lookalike).")] = None,
        shards: Annotated[Optional[Path], typer.Option("--shards", help="Folder of Parquet vector shards: --engine ray writes the missing vectors there; any engine reads them first (docs/scale-out-ray.md).")] = None,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Embed the catalogue and build or update an index."""
    options = dict(parse_option(text) for text in option or [])
    options.update({k: v for k, v in (("image_size", image_size), ("precision", precision))
                    if v is not None})
    ray_options = {k: v for k, v in (("address", address), ("num_actors", num_actors)) if v}
    index_options = {k: v for k, v in {"uri": uri, "collection": collection}.items() if v}
    summary = Project(project, create=False).index(embedder, kind=kind, name=name,
                                                   embedder_options=options, progress=not as_json,
                                                   text_columns=text_column, engine=engine,
                                                   engine_options=ray_options,
                                                   index_options=index_options, shards=shards)
    if as_json:
        out.print_json(json.dumps(summary.to_json()))
        return
    out.print(f"index {summary.name!r}: {summary.kind} over {summary.size} items, "
              f"{summary.embedder} ({summary.dim}-d); {summary.added} embedded/updated, "
              f"{summary.removed} removed, {summary.unchanged} unchanged")
    for item_id in summary.failed:
        out.print(f"  could not embed {item_id}")


@app.command()
@user_errors
def watch(folder: Annotated[Path, typer.Argument(help="Folder of images to keep the catalogue and index in step with.")],
          index: IndexOption = None,
          embedder: Annotated[Optional[str], typer.Option("--embedder", "-e", help="Embedder for the index if it does not exist yet (default efficientnet-lite0); an existing index keeps its own.")] = None,
          settle: Annotated[float, typer.Option("--settle", min=0.0, help="Seconds a file's size and time must stay unchanged before it is read.")] = 1.0,
          poll: Annotated[bool, typer.Option("--poll", help="Scan the folder instead of kernel notifications (network drives, some containers).")] = False,
          poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.05, help="Seconds between scans when polling.")] = 0.5,
          batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Items per catalogue commit.")] = 256,
          project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Watch a folder: added, changed, renamed and removed images are ingested and indexed as
    they settle (Ctrl-C stops; a restart reconciles, nothing is lost)."""
    from lookalike.watch import FolderWatcher

    def show(batch) -> None:
        if as_json:
            print(json.dumps(batch.to_json()), flush=True)  # one JSON object per line
            return
        plain = {"highlight": False, "markup": False, "emoji": False, "soft_wrap": True}
        out.print(batch.summary(), **plain)
        for reject in batch.rejected:
            out.print(f"  rejected ({reject.reason}) {reject.message}", **plain)

    if not folder.is_dir():  # before the project is created
        raise LookalikeError(f"{folder}: no such folder to watch")
    watcher = FolderWatcher(Project(project), folder, index=index, embedder=embedder,
                            settle=settle, poll=poll, poll_interval=poll_interval,
                            batch_size=batch_size, on_batch=show, progress=not as_json,
                            on_note=lambda text: err.print(text, markup=False, soft_wrap=True))
    err.print(f"watching {watcher.folder} into {watcher.project.path} "
              f"({'polling' if poll else 'file notifications'}, settle {settle:g} s; Ctrl-C stops)",
              highlight=False, soft_wrap=True)
    watcher.run()


TextOption = Annotated[Optional[str], typer.Option("--text", "-t", help="Words: alone, or refining the photo / item, e.g. 'in red'.")]
TextWeightOption = Annotated[Optional[float], typer.Option("--text-weight", min=0.0, max=1.0, help="Weight w of the words in (1-w)*image + w*text (default 0.5; 1 for words alone).")]
FusionOption = Annotated[str, typer.Option("--fusion", help="How photo and words combine: weighted (score fusion) or rrf (reciprocal rank).")]
UnderstandOption = Annotated[bool, typer.Option("--understand/--no-understand", help="Understand words that name the catalogue's colours, genders and categories as filters (default on; docs/text-search.md).")]
LiteralOption = Annotated[Optional[list[str]], typer.Option("--literal", help="Keep this column's words as words for the text model, e.g. --literal colour (repeatable).")]
KeepTypeOption = Annotated[bool, typer.Option("--keep-type/--no-keep-type", help="With a photo or item and understood words naming no category, keep its category (default on).")]
PerClusterOption = Annotated[Optional[int], typer.Option("--per-cluster", min=1, help="Diversify: at most N results from any one cluster (needs `lookalike clusters`).")]


def _query_project(project: Path, text: str | None, index: str | None,
                   with_title: bool = False) -> Project:
    """Plain image queries only read; words may first need the fused index built or brought up
    to date (incremental), so they open the project writable when they can, and build a
    missing words index here, with a progress bar, rather than silently inside the query."""
    if with_title or bool(text and text.strip()):
        try:
            proj = Project(project, create=False)
        except LookalikeError:
            proj = None  # e.g. a read-only directory: use the text index as it is
        if proj is not None:
            name = proj.index_name(index)
            if not proj.has_text_index(name):
                err.print(f"no words index for index {name!r} yet: embedding the titles once "
                          "(`lookalike text-index`)", highlight=False)
                proj.text_index(name, progress=True)
            return proj
    return Project(project, create=False, read_only=True)


@app.command()
@user_errors
def similar(item_id: Annotated[str, typer.Argument(help="Catalogue item id.")], k: KOption = 5,
            text: TextOption = None, text_weight: TextWeightOption = None,
            with_title: Annotated[bool, typer.Option("--with-title", help="Also match the item's own title (fused item embeddings).")] = False,
            fusion: FusionOption = "weighted", per_cluster: PerClusterOption = None,
            understand: UnderstandOption = True, literal: LiteralOption = None,
            keep_type: KeepTypeOption = True,
            category: CategoryOption = None, gender: GenderOption = None, colour: ColourOption = None,
            price_min: PriceMinOption = None, price_max: PriceMaxOption = None,
            where: WhereOption = None, index: IndexOption = None,
            project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """More like this: the products most similar to a catalogue item (optionally refined by
    words, e.g. --text "in red")."""
    filters = _filters(category, gender, colour, price_min, price_max, where)
    proj = _query_project(project, text, index, with_title)
    found = proj.answer(item_id=item_id, text=text, k=k, filters=filters,
                        text_weight=text_weight, fusion=fusion, with_title=with_title,
                        per_cluster=per_cluster, index=index, understand=understand,
                        literal=literal or [], keep_type=keep_type)
    words = f" + {text.strip()!r}" if text and text.strip() else ""
    _print_answer(found, as_json, f"more like {item_id}{words}")


@app.command()
@user_errors
def search(photo: Annotated[Optional[Path], typer.Argument(help="A photo file (optional with --text).")] = None,
           k: KOption = 5, text: TextOption = None, text_weight: TextWeightOption = None,
           fusion: FusionOption = "weighted", per_cluster: PerClusterOption = None,
           understand: UnderstandOption = True, literal: LiteralOption = None,
           keep_type: KeepTypeOption = True,
           category: CategoryOption = None, gender: GenderOption = None, colour: ColourOption = None,
           price_min: PriceMinOption = None, price_max: PriceMaxOption = None,
           where: WhereOption = None, index: IndexOption = None,
           project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False,
           exact: Annotated[bool, typer.Option("--exact", help="Find this very product in a shopper's photo (re-rank by photo alignment).")] = False) -> None:
    """Search by photo, by words (--text "red running shoes"), or by a photo refined by words
    (PHOTO --text "in red")."""
    if photo is None and text is None:
        raise LookalikeError("give a photo, --text WORDS, or both")
    filters = _filters(category, gender, colour, price_min, price_max, where)
    found = _query_project(project, text, index).answer(
        image=photo, text=text, k=k, filters=filters, text_weight=text_weight, fusion=fusion,
        per_cluster=per_cluster, index=index, understand=understand, literal=literal or [],
        keep_type=keep_type, exact=exact)
    heading = " + ".join(x for x in (str(photo) if photo else None,
                                     repr(text.strip()) if text and text.strip() else None) if x)
    _print_answer(found, as_json, f"most like {heading}")


@app.command("eval")
@user_errors
def eval_command(
        class_column: Annotated[str, typer.Option("--class-column", help="Attribute that defines a match.")] = "category",
        query_split: Annotated[str, typer.Option("--query-split")] = "test",
        gallery_split: Annotated[str, typer.Option("--gallery-split")] = "train",
        k: Annotated[list[int], typer.Option("-k", help="Cut-offs for P@k/R@k/NDCG@k (repeatable).")] = [1, 5, 10],  # noqa: B006
        map_at: Annotated[int, typer.Option("--map-at")] = 100,
        out_dir: Annotated[Optional[Path], typer.Option("--out", help="Report folder.")] = None,
        index: IndexOption = None, project: ProjectOption = Path(DEFAULT_PROJECT_DIR),
        as_json: JsonOption = False) -> None:
    """Class-match retrieval quality (P@k, R@k, mAP@k, NDCG@k) with a result grid."""
    proj = Project(project, create=False)
    report = proj.evaluate(class_column=class_column, index=index, query_split=query_split,
                           gallery_split=gallery_split, ks=k, map_at=map_at, out_dir=out_dir)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    out.print(report.table())
    where = out_dir or proj.layout.evaluation(index or proj.default_index_name())
    out.print(f"report: {Path(where) / 'eval.json'}  result grid: {Path(where) / 'results.html'}")


@app.command()
@user_errors
def info(project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """What a project holds: items, indexes and filter values."""
    summary = Project(project, create=False, read_only=True).summary()
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(f"{summary['project']}: {summary['items']} items")
    for name, entry in summary["indexes"].items():
        mark = " (default)" if name == summary["default_index"] else ""
        precision = f", {entry['precision']}" if entry.get("precision") else ""
        out.print(f"  index {name}{mark}: {entry['kind']} / {entry['embedder']}{precision} "
                  f"({entry['embedder_id']})")
    for column, values in summary["filters"].items():
        shown = ", ".join(map(str, values[:12])) + (" ..." if len(values) > 12 else "")
        out.print(f"  {column}: {shown}", highlight=False)


@app.command()
@user_errors
def demo(project: ProjectOption = Path(DEFAULT_PROJECT_DIR),
         embedder: Annotated[str, typer.Option("--embedder", "-e")] = DEFAULT_EMBEDDER,
         as_json: JsonOption = False) -> None:
    """Ingest the bundled catalogue, index it, evaluate it and write an HTML page of results."""
    from lookalike.demo import run_demo

    result = run_demo(project, embedder=embedder, console=None if as_json else out)
    if as_json:
        out.print_json(json.dumps(result))


@app.command()
@user_errors
def serve(
        project: Annotated[Optional[Path], typer.Option("--project", "-p", help="Project directory (or LOOKALIKE_PROJECT).")] = None,
        host: Annotated[Optional[str], typer.Option("--host", help="Interface (default 127.0.0.1).")] = None,
        port: Annotated[Optional[int], typer.Option("--port", min=0, max=65535, help="TCP port (default 8000).")] = None,
        workers: Annotated[Optional[int], typer.Option("--workers", min=1, max=64, help="Worker processes sharing the project.")] = None,
        index: Annotated[Optional[str], typer.Option("--index", help="Index to serve (default: the project's).")] = None,
        read_only: Annotated[Optional[bool], typer.Option("--read-only/--writable", help="Refuse all writes (no API key needed).")] = None,
        api_key_file: Annotated[Optional[Path], typer.Option("--api-key-file", help="File holding the API key (or set LOOKALIKE_API_KEY).")] = None,
        config: Annotated[Optional[Path], typer.Option("--config", help="JSON or TOML settings file (or LOOKALIKE_CONFIG).")] = None,
        max_upload_bytes: Annotated[Optional[int], typer.Option("--max-upload-bytes", help="Largest upload (default 10 MB).")] = None,
        max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Largest image in pixels (default 40 MP).")] = None,
        cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="Allow this browser origin (repeatable; CORS is off by default).")] = None,
        default_k: Annotated[Optional[int], typer.Option("--default-k", min=1, max=100, help="Results when a query gives no k.")] = None,
        torch_threads: Annotated[Optional[int], typer.Option("--torch-threads", min=0, help="Torch threads per worker (0: leave as is).")] = None,
        watch: Annotated[Optional[Path], typer.Option("--watch", help="Also ingest and index the images of this folder as they appear, change or go (docs/watch.md).")] = None,
        watch_poll: Annotated[Optional[bool], typer.Option("--watch-poll/--watch-notify", help="Poll the watched folder instead of file notifications.")] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the REST API (/v1) and the web page (/) for a project."""
    from lookalike.serve.run import serve as run_server
    from lookalike.serve.settings import load_settings

    settings = load_settings(
        config, project=project, host=host, port=port, workers=workers, index=index,
        read_only=read_only,
        api_key_file=api_key_file, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
        cors_origins=cors_origin or None, default_k=default_k, torch_threads=torch_threads,
        watch=watch, watch_poll=watch_poll)
    settings.check_startable()
    Project(settings.project, create=False, read_only=True)  # fail now, in one line, if absent
    mode = "read-only" if settings.read_only else "writable (API key required for writes)"
    err.print(f"serving {settings.project} on http://{settings.host}:{settings.port}/ "
              f"({mode}, {settings.workers} worker{'s' if settings.workers > 1 else ''})",
              highlight=False, soft_wrap=True)
    run_server(settings, config_file=config, log_level=log_level)


# The commands kept in their own modules, each on its own Typer of the module (``commands``),
# join the core ones here, after them, in this order.
app.add_typer(beyond_commands.commands)
app.add_typer(personal_commands.commands)
app.add_typer(train_commands.commands)
app.add_typer(report_commands.commands)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
