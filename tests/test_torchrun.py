"""Under torchrun (gloo on CPU): a group that loses a worker to kill -9 restarts, resumes from the
last checkpoint and ends bit-identical to an uninterrupted run; two "nodes" on localhost train
the same run, each with its own memory budget, and only the main process writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from progan.runtime.runlock import LOCK_NAME
from test_training import TINY, assert_same_training_state, final_state

pytestmark = pytest.mark.slow
ENV = {"OMP_NUM_THREADS": "1"}


def torchrun(*launch: str) -> list[str]:
    return ["-m", "torch.distributed.run", *launch, str(REPO / "train.py")]


def train_args(data, out, *extra) -> list[str]:
    return ["--data", str(data), "--out", str(out), *TINY, "--total-kimg", "0.256", "--resume", "auto", *extra]


ONE_NODE = ("--nnodes", "1", "--nproc_per_node", "2", "--max-restarts", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0")


@pytest.fixture(scope="module")
def two_process_run(demo_lmdb, tmp_path_factory):
    """(run folder, output) of an uninterrupted 2-process run: 16 steps, a checkpoint every 4."""
    out = tmp_path_factory.mktemp("torchrun") / "run"
    proc = run_cli([*torchrun(*ONE_NODE), *train_args(demo_lmdb, out)], timeout=400, env=ENV)
    output = proc.stdout + proc.stderr
    assert "2 replicas identical" in output
    return out, output


def test_kill_9_of_a_worker_restarts_the_group_and_ends_identical(demo_lmdb, two_process_run, tmp_path):
    import psutil

    out = tmp_path / "run"
    cmd = [sys.executable, *torchrun(*ONE_NODE), *train_args(demo_lmdb, out)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        stats, deadline = out / "stats.jsonl", time.monotonic() + 300
        while time.monotonic() < deadline and not (stats.exists() and stats.read_text().count("\n") >= 3):
            time.sleep(0.02)  # past the first checkpoint (64 images), in the fade
        workers = psutil.Process(proc.pid).children()
        for worker in workers:  # freeze the group so the kill lands mid-run, not after the end
            worker.suspend()
        main_pid = json.loads((out / LOCK_NAME).read_text())["pid"]  # the lock holder: rank 0
        assert main_pid in [w.pid for w in workers]
        os.kill(main_pid, signal.SIGKILL)  # dies holding the run folder's lock
        for worker in workers:
            if worker.pid != main_pid:
                worker.resume()
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "resumed from" in output and "2 replicas identical" in output
    # The survivor's collective failed: one line (exit 5), no traceback; torchrun restarted the group.
    assert "error: process 1 lost another process of the run" in output and "Traceback" not in output, output
    assert json.loads((out / LOCK_NAME).read_text())["pid"] != main_pid  # the stale lock did not block
    assert_same_training_state(final_state(out), final_state(two_process_run[0]))
    lines = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["images_shown"] for s in lines] == list(range(32, 257, 32))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost(demo_lmdb, two_process_run, tmp_path):
    # Each "node" runs in its own folder with the same relative --out: whatever node 1 wrote
    # would land in its own folder, so an empty one proves that only the main process writes.
    port, nodes = free_port(), [tmp_path / "node0", tmp_path / "node1"]
    procs = []
    for rank, cwd in enumerate(nodes):
        cwd.mkdir()
        launch = ("--nnodes", "2", "--nproc_per_node", "1", "--node-rank", str(rank),
                  "--rdzv-endpoint", f"127.0.0.1:{port}")
        procs.append(subprocess.Popen([sys.executable, *torchrun(*launch), *train_args(demo_lmdb, "run")], cwd=cwd,
                                      env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "2 replicas identical" in outputs[0]
    for rank, output in enumerate(outputs):  # 1 process per node: each gets the node's whole budget
        assert f"node {rank}: 1 of 2 processes, real-image memory budget 2048 MiB per process" in output
    assert list(nodes[1].iterdir()) == []
    assert_same_training_state(final_state(nodes[0] / "run"), final_state(two_process_run[0]))
    lines = [json.loads(line) for line in (nodes[0] / "run" / "stats.jsonl").read_text().splitlines()]
    assert [s["images_shown"] for s in lines] == list(range(32, 257, 32))


def test_two_processes_on_one_node_share_its_budget(two_process_run):
    assert "node 0: 2 of 2 processes, real-image memory budget 1024 MiB per process" in two_process_run[1]


def test_every_process_refuses_a_folder_in_use(demo_lmdb, tmp_path):
    from test_reliability import hold_lock

    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        launch = ("--nnodes", "1", "--nproc_per_node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0")
        proc = run_cli([*torchrun(*launch), *train_args(demo_lmdb, out)], timeout=300, env=ENV, check=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert output.count(f"is in use by another training run (PID {holder.pid} on host") == 1  # said once
    # The first rank to exit 2 ends the group (torchrun stops the other): nobody hung or trained.
    assert "exitcode  : 2" in output and "tick" not in output, output
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_stop_request_on_one_worker_stops_every_process_at_the_same_step(demo_lmdb, two_process_run, tmp_path):
    """SIGTERM to rank 1 only: its flag reaches rank 0 through the gradient all-reduce (read one
    step late, on both alike), so both stop after the same step and the checkpoint is whole; the
    run resumed under torchrun ends identical to the uninterrupted one."""
    import psutil

    out = tmp_path / "run"
    cmd = [sys.executable, *torchrun(*ONE_NODE[:4], *ONE_NODE[6:]), *train_args(demo_lmdb, out)]  # no restarts
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        stats, deadline = out / "stats.jsonl", time.monotonic() + 300
        while time.monotonic() < deadline and not (stats.exists() and stats.read_text().count("\n") >= 2):
            time.sleep(0.02)
        main_pid = json.loads((out / LOCK_NAME).read_text())["pid"]
        other = [w for w in psutil.Process(proc.pid).children() if w.pid != main_pid]
        assert len(other) == 1
        other[0].send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped by a request on another process" in output and "2 replicas identical" in output, output
    stopped = final_state(out)["images_shown"]
    assert stopped < 256
    proc = run_cli([*torchrun(*ONE_NODE), *train_args(demo_lmdb, out)], timeout=400, env=ENV)
    assert_same_training_state(final_state(out), final_state(two_process_run[0]))


# Runs train.main in a torchrun worker, then names the process's threads: a gloo group that
# outlives the run shows as gloo_tcp_loop and pt_gloo_runloop threads.
_THREADS_AFTER_RUN = """
import os, sys, threading
sys.path.insert(0, {repo!r})
import train
code = train.main({args!r})
native = sorted(open(f"/proc/self/task/{{task}}/comm").read().strip() for task in os.listdir("/proc/self/task"))
print(f"rank {{os.environ['RANK']}} exit {{code}} threads {{native}} python {{threading.active_count()}}", flush=True)
os._exit(0)  # the threads are the result; skip the interpreter's exit, which they could abort
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc")
def test_a_finished_run_leaves_no_process_group_threads_behind(demo_lmdb, tmp_path):
    """A gloo group's threads alive at the interpreter's exit can abort a finished run (SIGABRT,
    "terminate called without an active exception", torchrun exit 1; 1 run in 3 on 2 busy cores),
    so train.main leaves the group and frees it before it returns."""
    script = tmp_path / "threads_after_run.py"
    args = train_args(demo_lmdb, tmp_path / "run", "--log-with", "none")
    script.write_text(_THREADS_AFTER_RUN.format(repo=str(REPO), args=args))
    launch = ("--nnodes", "1", "--nproc_per_node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0")
    proc = run_cli(["-m", "torch.distributed.run", *launch, str(script)], timeout=400, env=ENV)
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {rank} exit 0 threads ['python'] python 1" for rank in (0, 1)], proc.stdout + proc.stderr


def test_leaving_an_nccl_group_names_this_process_gpu(monkeypatch):
    """The barrier before leaving: on NCCL with this process's device (NCCL otherwise warns at the
    end of every multi-GPU run that it guesses one); gloo takes none. Then the group is freed."""
    import torch.distributed as dist

    from progan.runtime import elastic

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "barrier", lambda **kwargs: calls.append(("barrier", kwargs)))
    monkeypatch.setattr(elastic, "release_process_group", lambda: calls.append(("release", {})))
    monkeypatch.setattr("torch.cuda.current_device", lambda: 3)
    for backend in ("nccl", "gloo"):
        monkeypatch.setattr(dist, "get_backend", lambda backend=backend: backend)
        elastic.leave_process_group()
    assert calls == [("barrier", {"device_ids": [3]}), ("release", {}), ("barrier", {}), ("release", {})]
