"""`.onnx` generator files, and running them with onnxruntime.

The generator at one stage (default: where training stood, the final stage of a finished run).
Input `latents` float32 [batch, latent_size] (draw them with
`progan.generator.sampling.latents_for_seeds`), output `images` float32 [batch, C, H, W]
clamped to [-1, 1]: pixel = round((x + 1) * 127.5). A class-conditional model (K classes) has a
second input `labels` float32 [batch, K], one-hot (or soft) rows; an unconditional one has
`latents` alone. The class names are in the metadata (`class_names`, JSON). The batch is dynamic;
the opset is the newest that both the installed onnx and onnxruntime support. Needs the
`export` extra: `pip install -e ".[export]"`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from progan.generator.fileformat import CHECKSUMS, CheckpointError, ExportError, verify_checksums, with_checksums
from progan.generator.images import to_uint8
from progan.generator.sampling import default_classes, labels_for, latents_for_seeds
from progan.nets.layers import _Equalized
from progan.runtime.errors import first_line
from progan.runtime.fileio import atomic_output

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # onnxscript: torch's ONNX exporter needs it
ONNX_INSTALL_HINT = 'pip install -e ".[export]" (onnx, onnxscript, onnxruntime)'
MIN_ONNX_OPSET = 18  # the oldest opset torch's exporter writes


class _Stage(nn.Module):
    """The generator at one fixed stage: latents [N, latent] -> images [N, C, H, W] in [-1, 1]."""

    def __init__(self, generator: nn.Module, resolution: int, alpha: float):
        super().__init__()
        self.generator, self.resolution, self.alpha = generator, resolution, alpha

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.generator(latents, self.resolution, self.alpha).clamp(-1.0, 1.0)


class _ConditionalStage(_Stage):
    """A conditional generator at one stage: (latents [N, latent], labels [N, K] float) -> images.

    The generator is put in training mode: in eval mode it reads the label values back to check
    them (a data-dependent branch an exported graph cannot hold); nothing else in G depends on
    the mode (no batch norm, no dropout)."""

    def __init__(self, generator: nn.Module, resolution: int, alpha: float):
        super().__init__(generator.train(), resolution, alpha)

    def forward(self, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.generator(latents, self.resolution, self.alpha, labels=labels).clamp(-1.0, 1.0)


def _fold_equalized_scales(generator: nn.Module) -> None:
    """Multiply each equalized layer's run-time scale into its weight (scale 1 afterwards).

    The same function; the graph then has no per-batch choice of which operand to scale
    (layers._Equalized._scaled compares sizes, which a dynamic batch would turn into a guard).
    """
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, _Equalized):
                module.weight.mul_(module.scale)
                module.scale = 1.0


def onnx_opset() -> int:
    """The newest ONNX opset that both the installed onnx and onnxruntime support."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    probe = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for opset in range(onnx.defs.onnx_opset_version(), MIN_ONNX_OPSET, -1):
        model = helper.make_model(probe, opset_imports=[helper.make_opsetid("", opset)])
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 - "opset not supported" is how the runtime says no
            continue
    return MIN_ONNX_OPSET


def write_onnx(generator: nn.Module, resolution: int, alpha: float, out_path: Path,
               metadata: dict[str, str] | None = None) -> Path:
    """Write `generator` at (resolution, alpha) as an ONNX model with a dynamic batch; checked
    with onnx.checker before it is renamed into place. The generator is modified (scales folded)."""
    import warnings

    import onnx

    generator = generator.float().cpu().eval().requires_grad_(False)
    _fold_equalized_scales(generator)
    label_size = getattr(generator, "label_size", 0)
    # 2, not 1: export would fix a batch of 1
    examples = (torch.zeros(2, generator.latent_size),) + ((torch.zeros(2, label_size),) if label_size else ())
    names = ["latents", "labels"][:len(examples)]
    stage = (_ConditionalStage if label_size else _Stage)(generator, resolution, alpha)
    batch = torch.export.Dim("batch")
    with atomic_output(out_path) as tmp, warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")  # the exporter's chatter (no torchvision, converter fallback) is not the user's business
        try:
            program = torch.onnx.export(stage, examples, input_names=names, output_names=["images"],
                                        opset_version=onnx_opset(), dynamo=True, verbose=False,
                                        dynamic_shapes={name: {0: batch} for name in names})
            program.model.metadata_props.update(metadata or {})
            program.save(tmp, external_data=False)
            model = onnx.load(str(tmp))  # the weights' checksums, as every progan file carries them
            entry = model.metadata_props.add()
            entry.key, entry.value = CHECKSUMS, json.dumps(_initializer_checksums(model), sort_keys=True)
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp))
        except Exception as exc:  # noqa: BLE001 - the exporter's and checker's many error types
            raise ExportError(f"{out_path}: the ONNX export failed, nothing was written "
                              f"({type(exc).__name__}: {first_line(exc)})") from exc
    return out_path


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _initializer_checksums(model) -> dict:
    """{"algorithm": "crc32", "values": {"initializers/NAME": crc}}: every weight's dtype, shape and bytes."""
    from onnx import numpy_helper

    weights = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    return with_checksums({"initializers": weights})[CHECKSUMS]


def verify_onnx(path: Path) -> bool:
    """CheckpointError unless the file's weights match the checksums written with them; False
    (loaded unchecked) for a file from before checksums existed, or when onnx is not installed
    (onnxruntime alone runs the file but cannot read its weights)."""
    if importlib.util.find_spec("onnx") is None:
        return False
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - DecodeError, OSError, ...: all mean "unusable"
        raise CheckpointError(f"{path} is not a readable ONNX model (truncated or corrupt: {first_line(exc)})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if CHECKSUMS not in props:
        return False
    try:
        record = json.loads(props[CHECKSUMS])
    except ValueError:
        raise CheckpointError(f"{path} is damaged: its checksum record is unreadable") from None
    from onnx import numpy_helper

    weights = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    verify_checksums({"initializers": weights, CHECKSUMS: record}, path)
    return True


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for an exported `.onnx` generator; CheckpointError (one line)
    for a file that is missing, truncated, not an ONNX model, or whose weights do not match their
    checksums."""
    path = Path(path)
    missing = [name for name in ("onnxruntime",) if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"running {path} needs onnxruntime: {ONNX_INSTALL_HINT}")
    import onnxruntime

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    verify_onnx(path)
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - InvalidProtobuf, Fail, ...: all mean "unusable"
        raise CheckpointError(f"{path} is not a readable ONNX model (truncated or corrupt: {first_line(exc)})") from None


def onnx_latent_size(session) -> int:
    """The latent size an ONNX generator takes: its input `latents` is [batch, latent_size]
    (the model config in the file's metadata says the same, for readers without a session)."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    metadata = session.get_modelmeta().custom_metadata_map
    try:
        return int(json.loads(metadata["model_config"])["latent_size"])
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"the ONNX model's input is {shape}, not [batch, latent_size], and its metadata has "
                          f"no model config; export it again with generate.py export") from None


def onnx_class_names(session) -> tuple[str, ...]:
    """The class names of a conditional ONNX generator (its metadata), in label order; () for an
    unconditional one (a single input, `latents`)."""
    if [i.name for i in session.get_inputs()] == ["latents"]:
        return ()
    metadata = session.get_modelmeta().custom_metadata_map
    try:
        return tuple(json.loads(metadata["class_names"]))
    except (KeyError, TypeError, ValueError):
        raise ExportError("the ONNX model takes labels but its metadata names no classes; export it again "
                          "with generate.py export") from None


def onnx_images(session, seeds, latent_size: int | None = None, classes=None) -> "np.ndarray":  # noqa: F821
    """Seeds -> uint8 images [N, H, W, C] from an ONNX session, with the latents of
    progan.generator.sampling (the same image for a seed as the PyTorch generator, within float rounding).
    `latent_size` defaults to the model's own (onnx_latent_size); another one is an ExportError.
    `classes` (conditional models): one class name or index for every seed, one per seed, or
    float rows [N, K]; None gives seed s the class s mod K, as progan.generator.sampling does. It becomes
    the model's second input, `labels` float32 [N, K]."""
    expected = onnx_latent_size(session)
    if latent_size is not None and latent_size != expected:
        raise ExportError(f"latent_size {latent_size} does not fit this ONNX generator, which takes latents "
                          f"[batch, {expected}]; leave latent_size out to use the model's")
    names = onnx_class_names(session)
    if names and classes is None:
        classes = default_classes(seeds, len(names))
    try:
        labels = labels_for(classes, len(seeds), len(names), names)
    except ValueError as exc:
        raise ExportError(f"classes: {exc}") from None
    inputs = {"latents": latents_for_seeds(seeds, expected).numpy()}
    if labels is not None:
        inputs["labels"] = labels.numpy()
    (images,) = session.run(["images"], inputs)
    return to_uint8(torch.from_numpy(images))
