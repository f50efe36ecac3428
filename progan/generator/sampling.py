"""Images from a trained generator: seeds to latents to pictures, and looping latent walks.

Reproducibility rule: the latent of seed `s` is `randn(latent_size)` drawn on the CPU from
`torch.Generator().manual_seed(s)` alone. It does not depend on the device, the batch size or
the other seeds asked for, so `seed0042.png` is the same face (within float tolerance) however
and wherever it is made, from the training checkpoint or from its exported generator.

Latent walks follow the paper's videos (Karras et al. 2018, `generate_interpolation_video`):
a [frames, latent] sequence of independent Gaussian latents is blurred along time with a
Gaussian of `smoothing * fps` frames, wrapping around so the last frame leads smoothly back
to the first, and each frame is rescaled to the latent's expected norm sqrt(latent_size) (the
blur shrinks it). The paper rescales by one global RMS instead; the generator pixel-normalises
its input, so the images are the same either way.

Class-conditional models (ModelConfig.class_names, K classes) take a label with every latent.
`classes=` names it: a class name or index for every sample, one per seed, or float rows [N, K]
(one-hot or soft). Without it, seed `s` gets class `s mod K` (`default_classes`): reproducible,
and consecutive seeds cycle through every class. A walk may move between classes: its one-hot
label moves linearly from each listed class to the next and back to the first, so it loops.

    >>> G, info = progan.load_generator("checkpoints/run", device="cuda")
    >>> images = seeds_to_images(G, [0, 1, 2], resolution=info.resolution, alpha=info.alpha)
    >>> cats = seeds_to_images(G, [0, 1, 2], info.resolution, info.alpha, classes="cat")  # conditional
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from progan.generator.images import make_grid, to_uint8
from progan.generator.loading import GeneratorInfo
from progan.nets.layers import autocast
from progan.nets.networks import check_phase
from progan.shapes import describe_level

MAX_SEED = 2**32 - 1  # the range numpy and most tools accept; keeps file names short
MAX_SEEDS = 10_000_000  # a typo like 0-4294967295 should fail fast, not fill memory
_SEED_ITEM = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")


# -- seeds ----------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """'0-63', '3,7,42' or a mix ('0-3,10') -> a list of seeds in the order given.

    Raises ValueError (one line) for anything else: empty items, negative or too-large seeds,
    descending ranges, or a seed given twice (its image would just be written twice).
    """
    seeds: list[int] = []
    for item in text.split(","):
        item = item.strip()
        match = _SEED_ITEM.match(item)
        if not match:
            raise ValueError(f"bad seed list {text!r}: {item!r} is not a seed (N) or a range (A-B); "
                             "example: 0-63 or 3,7,42")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"bad seed list {text!r}: range {item} runs backwards")
        if last > MAX_SEED:
            raise ValueError(f"bad seed list {text!r}: seeds must be at most {MAX_SEED}")
        if len(seeds) + (last - first + 1) > MAX_SEEDS:
            raise ValueError(f"bad seed list {text!r}: more than {MAX_SEEDS} seeds in one run")
        seeds.extend(range(first, last + 1))
    repeated = [seed for seed, times in Counter(seeds).items() if times > 1]
    if repeated:
        shown = ", ".join(map(str, sorted(repeated)[:5]))
        raise ValueError(f"bad seed list {text!r}: seed {shown} given more than once")
    return seeds


def seed_range(first: int, count: int) -> list[int]:
    """`count` consecutive seeds from `first` (what --num N --seed S means)."""
    if count < 1:
        raise ValueError(f"need at least one seed, got {count}")
    if not 0 <= first or first + count - 1 > MAX_SEED:
        raise ValueError(f"seeds {first}..{first + count - 1} fall outside 0..{MAX_SEED}")
    return list(range(first, first + count))


def latent_for_seed(seed: int, latent_size: int) -> torch.Tensor:
    """The latent of `seed`: [latent_size] float32, drawn on the CPU from this seed alone."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(latent_size, generator=generator)


def latents_for_seeds(seeds: Sequence[int], latent_size: int) -> torch.Tensor:
    """[len(seeds), latent_size] on the CPU, row i being `latent_for_seed(seeds[i])`."""
    return torch.stack([latent_for_seed(s, latent_size) for s in seeds])


# -- classes (conditional models) ----------------------------------------------------------
ALL_CLASSES = "all"
_CLASS_SEPARATOR = ":"


def _known_classes(class_names: Sequence[str]) -> str:
    return ", ".join(f"{i}={name}" for i, name in enumerate(class_names))


def class_index(value: str | int, class_names: Sequence[str]) -> int:
    """A class given by name (exactly as stored) or by index -> its index; ValueError (one line,
    listing the known classes) for anything else, and for an unconditional model."""
    if not class_names:
        raise ValueError(f"class {value!r} given, but this model is unconditional (its config has no class names)")
    if isinstance(value, str) and value in class_names:  # a name wins over reading it as an index
        return list(class_names).index(value)
    text = str(value).strip()
    if not isinstance(value, bool) and re.fullmatch(r"[0-9]+", text) and int(text) < len(class_names):
        return int(text)
    what = f"index {text} is out of range" if re.fullmatch(r"-?[0-9]+", text) else f"{text!r} is not a class"
    raise ValueError(f"{what}; this model's {len(class_names)} classes are {_known_classes(class_names)} "
                     "(give a name or an index)")


def parse_classes(text: str, class_names: Sequence[str]) -> list[int]:
    """A --class value -> class indices: 'cat' or '3' -> [i]; 'cat:dog' (a walk's path) -> [i, j];
    'all' -> every class (a class named 'all' is given by its index). A name holding ':' is read
    whole when it is the entire value. ValueError (one line) for unknown classes or a malformed list."""
    if not class_names:
        raise ValueError("this model is unconditional (its config has no class names); leave --class out")
    if text.strip() == ALL_CLASSES:  # always every class: a class named "all" is given by its index
        return list(range(len(class_names)))
    items = [text] if text in class_names else text.split(_CLASS_SEPARATOR)
    if any(not item.strip() for item in items):
        raise ValueError(f"bad class list {text!r}: an empty item; give NAME, INDEX or a walk's path "
                         f"NAME:NAME[:...], e.g. {class_names[0]}:{class_names[1]}")
    indices = [class_index(item if item in class_names else item.strip(), class_names) for item in items]
    for a, b in zip(indices, indices[1:]):
        if a == b:
            raise ValueError(f"bad class list {text!r}: {class_names[a]} follows itself; list each stop once")
    return indices


def default_classes(seeds: Sequence[int], label_size: int) -> list[int]:
    """The class of each seed when none is asked for: seed mod K (the same for a seed in any run)."""
    return [int(seed) % label_size for seed in seeds]


def labels_for(classes, count: int, label_size: int, class_names: Sequence[str] = ()) -> torch.Tensor | None:
    """`classes` as the generator's labels for `count` samples: float one-hot/soft rows [count, K]
    (CPU). None stays None for an unconditional model (K = 0). `classes`: one class (name or index)
    for all, a sequence of one per sample, or a float tensor/array [count, K]."""
    if label_size == 0:
        if classes is not None:
            raise ValueError("classes given, but this model is unconditional (its config has no class names)")
        return None
    if classes is None:
        raise ValueError(f"this model is class-conditional ({label_size} classes); pass classes=")
    if isinstance(classes, (torch.Tensor, np.ndarray)) and np.ndim(classes) == 2:
        rows = torch.as_tensor(np.asarray(classes) if isinstance(classes, np.ndarray) else classes).float().cpu()
        if tuple(rows.shape) != (count, label_size):
            raise ValueError(f"label rows must be [{count}, {label_size}], got {list(rows.shape)}")
        return rows
    if isinstance(classes, (str, int, np.integer)):
        classes = [classes] * count
    classes = list(np.asarray(classes).tolist()) if isinstance(classes, (torch.Tensor, np.ndarray)) else list(classes)
    if len(classes) != count:
        raise ValueError(f"{len(classes)} classes for {count} samples; give one class, or one per sample")
    names = list(class_names) or [str(i) for i in range(label_size)]
    indices = torch.tensor([class_index(c, names) for c in classes], dtype=torch.long)
    return torch.nn.functional.one_hot(indices, label_size).float()


def walk_labels(classes: Sequence[int], frames: int, label_size: int) -> torch.Tensor:
    """[frames, K] one-hot labels along a looping walk through `classes` (indices): frame t sits
    t/frames of the way round the loop c0 -> c1 -> ... -> c0, moving linearly between stops."""
    stops = torch.nn.functional.one_hot(torch.tensor(list(classes), dtype=torch.long), label_size).double()
    position = torch.arange(frames, dtype=torch.float64) * len(classes) / frames  # [frames]
    start = position.floor().long()
    weight = (position - start).unsqueeze(1)  # [frames, 1]
    return ((1 - weight) * stops[start] + weight * stops[(start + 1) % len(classes)]).float()


def class_tag(classes: Sequence[int], class_names: Sequence[str]) -> str:
    """A file-name-safe tag for classes (indices): 'cat', 'cat-dog'; a name with other characters
    than letters, digits, '.' and '_' (or starting with '.') is written by its index: 'class3'."""
    parts = [name if re.fullmatch(r"[A-Za-z0-9._]+", name) and not name.startswith(".") else f"class{i}"
             for i, name in ((i, class_names[i]) for i in classes)]
    return "-".join(parts)


# -- which stage to sample ------------------------------------------------------------------
def sampling_stage(info: GeneratorInfo, resolution: int | None = None) -> tuple[int, float]:
    """(resolution, alpha) to sample at.

    None: where training stood (its resolution and fade weight). A lower trained resolution:
    that stage's stable output (alpha 1), which training finished before growing. The current
    resolution asked for explicitly keeps the current alpha (a stage still fading in has no
    stable output yet). Anything else raises ValueError with the choices.
    """
    try:
        check_phase(info.model_config, info.resolution, info.alpha)
    except ValueError as exc:
        raise ValueError(f"{info.path} records an impossible stage ({exc})") from None
    trained = [r for r in info.model_config.resolutions if r <= info.resolution]
    if resolution is None or resolution == info.resolution:
        return info.resolution, info.alpha
    if resolution in trained:
        return resolution, 1.0
    config = info.model_config
    # Levels are named by their long side; a non-square model's choices show their width x height.
    choices = ", ".join(str(r) if config.aspect == "1:1" else f"{r} ({describe_level(config.aspect, r)})"
                        for r in trained)
    if resolution > info.resolution and resolution in config.resolutions:
        raise ValueError(f"--resolution {resolution} is above the {describe_level(config.aspect, info.resolution)} this "
                         f"checkpoint has trained to; choose one of {choices}")
    raise ValueError(f"--resolution {resolution} is not a level of this generator; choose one of {choices}")


# -- running the generator ------------------------------------------------------------------
def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def iter_image_batches(
    generator: torch.nn.Module,
    latents: torch.Tensor,
    resolution: int,
    alpha: float = 1.0,
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    labels: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Yield float32 CPU images [B, C, H, W] in [-1, 1] (about), `batch_size` latents at a time.

    Streams, so thousands of images never sit in memory at once. Latents (and `labels`, a
    conditional model's class indices [N] or rows [N, K]) are moved to the generator's device
    here; drawing them stays the caller's business (on the CPU, from seeds).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and len(labels) != len(latents):
        raise ValueError(f"{len(labels)} labels for {len(latents)} latents")
    device = _device_of(generator)
    label_chunks = labels.split(batch_size) if labels is not None else [None] * math.ceil(len(latents) / batch_size)
    for chunk, label_chunk in zip(latents.split(batch_size), label_chunks):
        # Entered per batch, not around the yield: a suspended generator would otherwise leave
        # no_grad and autocast switched on in the caller's code. no_grad rather than
        # inference_mode so the images are ordinary tensors the caller may use any way.
        extra = {} if label_chunk is None else {"labels": label_chunk.to(device)}
        with torch.no_grad(), autocast(device, autocast_dtype):
            images = generator(chunk.to(device), resolution=resolution, alpha=alpha, **extra)
        yield images.float().cpu()


def synthesize(generator, latents, resolution, alpha=1.0, batch_size=32, autocast_dtype=None,
               labels=None) -> torch.Tensor:
    """All images of `latents` as one float32 CPU tensor [N, C, H, W] (see iter_image_batches)."""
    return torch.cat(list(iter_image_batches(generator, latents, resolution, alpha, batch_size, autocast_dtype,
                                             labels)))


def seeds_to_images(
    generator: torch.nn.Module,
    seeds: Sequence[int],
    resolution: int,
    alpha: float = 1.0,
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    latent_size: int | None = None,
    classes=None,
) -> np.ndarray:
    """Seeds -> uint8 images [N, H, W, C], the same for a seed on any device or batch size.

    `classes` (conditional models): one class name or index for every seed, one per seed, or
    float rows [N, K]; None gives seed s the class s mod K. Refused for an unconditional model."""
    if len(seeds) == 0:
        raise ValueError("seeds_to_images needs at least one seed")
    latent_size = latent_size or _latent_size(generator)
    latents = latents_for_seeds(seeds, latent_size)
    labels = _labels(generator, seeds, classes)
    batches = iter_image_batches(generator, latents, resolution, alpha, batch_size, autocast_dtype, labels)
    return np.concatenate([to_uint8(batch) for batch in batches])


def class_names_of(generator: torch.nn.Module) -> tuple[str, ...]:
    """The class names of a progan Generator (also through torch.compile); () if unconditional."""
    config = getattr(generator, "cfg", None) or getattr(getattr(generator, "_orig_mod", None), "cfg", None)
    return tuple(getattr(config, "class_names", ()))


def _labels(generator: torch.nn.Module, seeds: Sequence[int], classes) -> torch.Tensor | None:
    names = class_names_of(generator)
    if names and classes is None:
        classes = default_classes(seeds, len(names))
    return labels_for(classes, len(seeds), len(names), names)


def _latent_size(generator: torch.nn.Module) -> int:
    size = getattr(generator, "latent_size", None)  # progan's Generator (also through torch.compile)
    if size is None:
        raise ValueError("cannot tell the generator's latent size; pass latent_size=")
    return int(size)


# -- latent walks ---------------------------------------------------------------------------
def walk_latents(
    seed: int, frames: int, latent_size: int, smoothing: float = 1.0, fps: float = 30.0
) -> torch.Tensor:
    """A looping latent walk [frames, latent_size] (float32, CPU), determined by its arguments.

    `smoothing` is the blur's standard deviation in seconds (the paper's smoothing_sec, 1.0),
    so sigma = smoothing * fps frames; 0 gives independent latents (a slideshow).
    """
    from scipy.ndimage import gaussian_filter1d

    if frames < 1:
        raise ValueError(f"a walk needs at least one frame, got {frames}")
    if smoothing < 0 or fps <= 0:
        raise ValueError(f"need smoothing >= 0 and fps > 0, got smoothing={smoothing}, fps={fps}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    raw = torch.randn(frames, latent_size, generator=generator, dtype=torch.float64).numpy()
    sigma = smoothing * fps
    # mode="wrap" treats time as a circle: the walk's end blends into its start, so it loops.
    smooth = gaussian_filter1d(raw, sigma, axis=0, mode="wrap") if sigma > 0 else raw
    norms = np.linalg.norm(smooth, axis=1, keepdims=True)
    smooth = smooth / np.maximum(norms, 1e-12) * math.sqrt(latent_size)
    return torch.from_numpy(smooth).float()


def walk_frames(
    generator: torch.nn.Module,
    seeds: Sequence[int],
    frames: int,
    resolution: int,
    alpha: float = 1.0,
    smoothing: float = 1.0,
    fps: float = 30.0,
    rows: int | None = None,
    cols: int | None = None,
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    on_frame: Callable[[int], None] | None = None,
    latent_size: int | None = None,
    classes: Sequence[str | int] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the walk's frames as uint8 [H, W, C]: one walk per seed, tiled rows x cols.

    One seed gives one walk at full size; several give a grid of walks, cell i walking from
    seeds[i]. `on_frame(n)` is called after each frame (for progress).

    `classes` (conditional models): the classes (names or indices) every cell's label walks
    through, looping (walk_labels); one class holds still. None: cell i keeps seeds[i] mod K.
    """
    latent_size = latent_size or _latent_size(generator)
    # [frames, walks, latent]: every cell's latent for one frame sits together, so a frame's
    # cells run as one batch.
    paths = torch.stack([walk_latents(s, frames, latent_size, smoothing, fps) for s in seeds], dim=1)
    label_paths = _walk_label_paths(generator, seeds, frames, classes)  # [frames, walks, K] or None
    frames_per_batch = max(1, batch_size // len(seeds))
    for start in range(0, frames, frames_per_batch):
        chunk = paths[start:start + frames_per_batch]
        flat = chunk.reshape(-1, latent_size)
        labels = None if label_paths is None else label_paths[start:start + frames_per_batch].flatten(0, 1)
        images = to_uint8(synthesize(generator, flat, resolution, alpha, batch_size, autocast_dtype, labels))
        for frame_cells in images.reshape(len(chunk), len(seeds), *images.shape[1:]):
            yield frame_cells[0] if len(seeds) == 1 else make_grid(frame_cells, rows=rows, cols=cols)
            if on_frame is not None:
                on_frame(1)


def _walk_label_paths(generator, seeds: Sequence[int], frames: int, classes) -> torch.Tensor | None:
    names = class_names_of(generator)
    if not names:
        if classes is not None:
            raise ValueError("classes given, but this model is unconditional (its config has no class names)")
        return None
    if classes is None:  # every cell holds its seed's default class
        return labels_for(default_classes(seeds, len(names)), len(seeds), len(names)).expand(frames, -1, -1)
    if isinstance(classes, (str, int)):
        classes = [classes]
    path = walk_labels([class_index(c, names) for c in classes], frames, len(names))  # [frames, K]
    return path.unsqueeze(1).expand(-1, len(seeds), -1)


def parse_grid(text: str) -> tuple[int, int]:
    """'8x8' or '2x4' (rows x columns) -> (rows, cols); ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", text)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(f"bad grid {text!r}: expected ROWSxCOLS with both at least 1, e.g. 8x8")
    return int(match.group(1)), int(match.group(2))

