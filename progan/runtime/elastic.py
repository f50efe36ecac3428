"""Process-group start-up that survives torchrun's automatic restarts (--max-restarts).

torchrun keeps one key-value store for the whole job and hands it to every restarted group. The
process group's keys (each rank's address for gloo's full mesh) then still hold the dead
group's values, and the new ranks race to connect to ports nobody listens on any more:
"Gloo connectFullMesh failed ... Connection refused" or a hang (seen here in about half of the
restarts; pytorch/pytorch#167288). Starting the group ourselves on the same store, under a
prefix that names the restart, gives every round fresh keys; accelerate then joins that group.
"""

from __future__ import annotations

import os


def init_process_group(cpu: bool) -> bool:
    """Under torchrun with several processes, start the default process group with per-restart
    keys (gloo on CPU, nccl on CUDA); returns False (and leaves it to accelerate) otherwise."""
    import torch
    import torch.distributed as dist

    # Its functions take `group=group.WORLD` as a default, evaluated at import: imported after the
    # group starts (torch.optim.Adam imports it, through torch._dynamo and FSDP), they would hold
    # the group for good, and its gloo threads would live until the interpreter's exit (see
    # release_process_group). Imported first, the default is None: the current default group.
    import torch.distributed.nn.functional  # noqa: F401

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if restart is None or world_size == 1 or not dist.is_available() or dist.is_initialized():
        return False
    if not cpu and not torch.cuda.is_available():
        return False  # another accelerator: accelerate knows its backend
    try:
        from torch.distributed.rendezvous import _create_c10d_store  # agent store or rank 0's own, as torch does
    except ImportError:  # pragma: no cover - a torch without it: accelerate's own start-up
        return False
    rank = int(os.environ["RANK"])
    timeout = dist.default_pg_timeout
    store = _create_c10d_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world_size, timeout)
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("gloo" if cpu else "nccl", store=dist.PrefixStore(f"progan/restart{restart}", store),
                            rank=rank, world_size=world_size, timeout=timeout)
    return True


_LOST_PEER_WORDS = ("connection reset by peer", "connection closed by peer", "broken pipe",
                    "communicator was aborted", "connection refused")


def lost_peer(exc: BaseException) -> bool:
    """True when `exc` is a collective failing because another process of the group died."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return type(exc).__name__ in ("DistNetworkError",) or any(word in text for word in _LOST_PEER_WORDS)


def leave_process_group() -> None:
    """Every process of a finished (or stopped) run leaves the group together: a barrier, then
    release_process_group. Only on the normal paths: after a peer died, a barrier would wait
    for it. Call it before accelerate's end_training, which destroys the group with no barrier."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":  # name this process's GPU, or NCCL warns that it guesses one
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
    release_process_group()


def release_process_group() -> None:
    """Destroy the process group (if any) and free it now, while the interpreter is whole.

    destroy_process_group only unregisters the group: the gloo backend sits in a reference
    cycle and its worker threads live on until a garbage collection. If that collection is
    the interpreter's own at exit, a worker that still drops its last collective's tensors
    (a Python decref) is killed by the finalizing interpreter inside C++ code: "terminate
    called without an active exception", SIGABRT, exit 1 under torchrun for a run that had
    finished and saved everything (1 run in 3 on 2 busy cores). A collection here joins the
    workers: torch releases the GIL while it destroys the backend, so they can finish first.
    Purely local (no collective): safe on every exit path, also after a peer died."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
