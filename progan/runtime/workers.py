"""Process pools that stop when their command stops."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now (Ctrl-C, SIGTERM or an error): queued work is cancelled and
    running work is not waited for; each worker is terminated and reaped, so none is left behind."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
