"""The run behind tests/fixtures/legacy/: a tiny training run through the public commands only
(data_prep synth + build, train.py, generate.py export), so the same steps run on any progan
release and a refactor can be held to it.

    python tests/legacy_fixture.py            # rewrites tests/fixtures/legacy/ (a release's files)

test_legacy_files.py loads the committed files with today's code (checkpoints and exports written
before a change must load unchanged) and reruns the same training to compare its checkpoint's
digest with the committed one (a change that moves code must not move a single bit).

No progan import here: the digest is computed from the file with torch alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "legacy"
# Wall-clock, where-the-files-were and the database build's own identity (a fresh fingerprint per
# build): the only values two identical runs may differ in.
VOLATILE = {"counters/training_seconds", "config/data", "config/out", "dataset_fingerprint", "checksums"}
# A tiny model (16 channels, 16-d latents) through 4x4 and into the 8x8 fade, one thread so
# the float sums run in one order.
TINY_MODEL = {"latent_size": 16, "fmap_base": 32, "fmap_max": 16, "fmap_min": 8}
TINY_SCHEDULE = {"fade_kimg": 0.128, "stable_kimg": 0.128, "batch": {"4": 8, "8": 8}, "total_kimg": 0.2}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(*args, cwd: Path) -> str:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def train_tiny_run(work: Path) -> Path:
    """The fixture's training run in `work`; returns the run folder."""
    _run("-m", "data_prep", "synth", "faces", "--count", 64, "--size", 16, "--seed", 0, cwd=work)
    _run("-m", "data_prep", "build", "faces", "faces.lmdb", "--max-res", 8, cwd=work)
    text = _run(REPO / "train.py", "--data", "faces.lmdb", "--out", "x", "--config", "small", "--dry-run", cwd=work)
    config = json.JSONDecoder().raw_decode(text)[0]  # the JSON, then the schedule's table
    config["model"].update(TINY_MODEL)
    config["schedule"].update(TINY_SCHEDULE)
    config.update(tick_kimg=0.064, workers=0, log_with="none")
    (work / "tiny.json").write_text(json.dumps(config, indent=1))
    _run(REPO / "train.py", "--data", "faces.lmdb", "--out", "run", "--config", "tiny.json", cwd=work)
    return work / "run"


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _leaves(value, f"{prefix}/{index}")
    else:
        yield prefix, obj


def checkpoint_digest(path: Path) -> str:
    """sha256 over every tensor's dtype, shape and bytes and every other value's text, by key path,
    leaving out VOLATILE (and torch's archive bytes, which hold the file's own name)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key, value in _leaves(data):
        if key in VOLATILE or key.split("/")[0] in VOLATILE:
            continue
        digest.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            tensor = value.detach().contiguous()
            digest.update(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def latest_checkpoint(run: Path) -> Path:
    return run / json.loads((run / "latest.json").read_text())["checkpoint"]


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = train_tiny_run(work)
        checkpoint = latest_checkpoint(run)
        _run(REPO / "generate.py", "export", run, work / "generator.pt", cwd=work)
        _run(REPO / "generate.py", "export", run, work / "generator.safetensors", cwd=work)
        FIXTURES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, FIXTURES / "training.pt")
        for name in ("generator.pt", "generator.safetensors"):
            shutil.copyfile(work / name, FIXTURES / name)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        record = {"commit": commit, "torch": torch.__version__,
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "checkpoint": checkpoint.name, "digest": checkpoint_digest(checkpoint)}
        (FIXTURES / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
