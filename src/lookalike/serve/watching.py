"""``serve --watch DIR``: the service keeps its catalogue in step with a folder while it serves.

One watcher per service, never one per worker: with one worker it runs in the app's lifespan,
with several it runs in the process that starts them (:func:`lookalike.serve.run.serve`). It
writes through its own project (serialised with the API's writes by the project's write lock),
and every worker's queries switch to the updated index on their next request.
"""

from __future__ import annotations

import logging

from lookalike.serve.settings import ServeSettings
from lookalike.watch import BackgroundWatcher, WatchBatch

log = logging.getLogger("lookalike.watch")


def start_watcher(settings: ServeSettings) -> BackgroundWatcher | None:
    """Start watching ``settings.watch`` in a background thread (None when not asked to)."""
    if settings.watch is None:
        return None

    def logged(batch: WatchBatch) -> None:
        if batch.error:
            log.error("watch %s", batch.summary())
        else:
            log.info("watch %s", batch.summary())
        for reject in batch.rejected:
            log.warning("watch: rejected %s: %s", reject.reason, reject.message)

    def failed(error: BaseException) -> None:
        log.error("watching %s stopped: %s", settings.watch, error, exc_info=error)

    watcher = BackgroundWatcher(
        settings.project, settings.watch, on_error=failed, index=settings.index,
        settle=settings.watch_settle, poll=settings.watch_poll, on_batch=logged,
        on_note=lambda text: log.warning("watch: %s", text))
    watcher.start()
    log.info("watching %s (settle %g s, %s)", settings.watch, settings.watch_settle,
             "polling" if settings.watch_poll else "file notifications")
    return watcher
