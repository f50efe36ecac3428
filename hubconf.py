"""torch.hub entry points: a ready generator from a trained run, checkpoint or export.

    G = torch.hub.load("path/to/progan", "generator", path="generator.safetensors", source="local")
    images = G.sample([0, 1, 2])          # uint8 [N, H, W, 3] at the stage the file records
    x = G(latents, G.resolution, G.alpha) # or call it as the network itself

Class-conditional models: `G.class_names` lists the classes in label order;
`G.sample(seeds, classes="cat")` (a name or index for all, one per seed, or float rows [N, K]);
`G(latents, G.resolution, G.alpha, labels=...)` with class indices (int64 [N]) or one-hot rows
(float [N, K]) on G's device.

`path` is what `progan.load_generator` reads: a run folder (its latest checkpoint), a training
checkpoint, or a .pt / .safetensors export; always loaded weights-only.
"""

dependencies = ["torch", "numpy", "PIL", "scipy"]


def generator(path: str, device: str = "cpu", ema: bool = True):
    """The eval-mode ProGAN generator stored at `path`, on `device`, with its stage attached:
    `.resolution`, `.alpha`, `.info` (progan.generator.loading.GeneratorInfo), `.class_names` and
    `.sample(seeds, classes=None)` (uint8 images [N, H, W, C]).

    Class-conditional models (`G.class_names` not empty; also `G.cfg.class_names`) need labels:
    `G.sample(seeds, classes="cat")` takes a class name or index for every seed, a list of one
    per seed, or float rows [N, K]; without classes, seed s gets class s mod K. Called as the
    network, `G(latents, G.resolution, G.alpha, labels=labels)` takes class indices (int64 [N])
    or one-hot/soft rows (float [N, K]) on G's device; an unconditional model takes no labels."""
    import functools

    # imported on use: torch.hub reads `dependencies` before anything of progan is imported
    from progan.generator.loading import load_generator
    from progan.generator.sampling import seeds_to_images

    model, info = load_generator(path, device=device, ema=ema)
    model.info, model.resolution, model.alpha = info, info.resolution, info.alpha
    model.class_names = info.model_config.class_names
    model.sample = functools.partial(seeds_to_images, model, resolution=info.resolution, alpha=info.alpha)
    return model
