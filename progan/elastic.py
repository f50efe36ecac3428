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
    destroy_process_group. A rank that exits while its peer still holds the group can make gloo
    abort it at exit ("terminate called without an active exception", SIGABRT: exit 1 under
    torchrun for a run that finished and saved everything; seen about 1 in 10 runs on a busy
    machine). Only on the normal paths: after a peer died, a barrier would wait for it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()
