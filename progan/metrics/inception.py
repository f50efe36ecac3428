"""The Inception-v3 feature network used for FID, defined here (no torchvision needed).

This is the FID variant of Inception-v3 that pytorch-fid and most PyTorch FID tools use: the
TensorFlow graph of 2015-12-05 (the one TTUR's reference FID code uses) ported to PyTorch.
It differs from torchvision's Inception-v3 in three places, all kept here: the average pools
in blocks A, C and the first E block ignore the zero padding (TensorFlow's behaviour), and the
second E block pools with max instead of average. The head has 1008 classes; it is only
present so the file loads strictly and is never used.

Expected weights file: ``pt_inception-2015-12-05-6726825d.pth``, published with
pytorch-fid (github.com/mseitzer/pytorch-fid, release "fid_weights"). As with torch.hub, the
8 hex digits in its name are the start of the file's SHA-256, and the loader checks them:
``sha256(file)`` must start with ``6726825d``. Other weights can be loaded deliberately
(``verify=False``; CLI ``--inception-unverified``), but then FID is not comparable with
published numbers.

Features: uint8 images are scaled to [0, 1], resized to 299x299 (bilinear, align_corners=False,
no antialiasing, as pytorch-fid), mapped to [-1, 1], and the 2048-d output of the final average
pool ("pool3") is returned. Grayscale images are repeated to three channels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from progan.generator.fileformat import load_weights_only
from progan.metrics.common import MetricError

WEIGHTS_FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"
FEATURE_DIMS = 2048
INPUT_SIZE = 299


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_args) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_args)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 average pool leaves the zero padding out of the average.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """Factorised 7x7 convolutions at 17x17."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_tf_avg_pool(x)),
        ], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            seven,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """Expanded filter bank at 8x8; `max_pool` selects the FID graph's second-block quirk."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.max_pool:  # the 2015 graph max-pools here (a quirk every FID tool keeps)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], dim=1)


class FIDInceptionV3(nn.Module):
    """uint8 images [N, C, H, W] -> float32 pool3 features [N, 2048]. Module names match the file."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIMS, 1008)  # classifier head: in the file, unused for FID

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise MetricError(f"Inception expects uint8 images [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.fc.weight.device, torch.float32) / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inception(path: str | Path, *, verify: bool = True,
                   device: torch.device | str = "cpu") -> tuple[FIDInceptionV3, str]:
    """The FID Inception network with weights from `path`, in eval mode, and the file's SHA-256.

    Raises MetricError (one line) for a missing or unreadable file, a checksum that is not the
    expected weights' (when `verify`), or a state dict whose names or shapes do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"Inception weights file {path} does not exist (expected {WEIGHTS_FILE_NAME})")
    sha256 = file_sha256(path)
    if verify and not sha256.startswith(WEIGHTS_SHA256_PREFIX):
        raise MetricError(
            f"{path} is not {WEIGHTS_FILE_NAME}: its SHA-256 starts with {sha256[:8]}, expected "
            f"{WEIGHTS_SHA256_PREFIX} (pass --inception-unverified to use other weights; FID will not be comparable)")
    state = load_weights_only(path, "PyTorch weights file", MetricError)
    model = FIDInceptionV3()
    _check_state_dict(state, model, path)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device), sha256


def _check_state_dict(state: object, model: nn.Module, path: Path) -> None:
    """One-line errors for what load_state_dict would report as a multi-line RuntimeError."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetricError(f"{path} is not a state dict of tensors")
    expected = model.state_dict()
    for name, tensor in expected.items():
        # Files saved before PyTorch 0.4 have no batch-norm step counters; they do not affect eval.
        if name.endswith("num_batches_tracked") and name not in state:
            state[name] = tensor.clone()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise MetricError(f"{path} does not fit the FID Inception-v3: parameters {', '.join(parts)}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise MetricError(f"{path} does not fit the FID Inception-v3: {name} has shape "
                              f"{tuple(state[name].shape)}, expected {tuple(tensor.shape)}")
