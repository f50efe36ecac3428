"""torch.hub entry points: a ready generator from a trained run, checkpoint or export.

    G = torch.hub.load("path/to/progan", "generator", path="generator.safetensors", source="local")
    images = G.sample([0, 1, 2])          # uint8 [N, H, W, 3] at the stage the file records
    x = G(latents, G.resolution, G.alpha) # or call it as the network itself

`path` is what `progan.load_generator` reads: a run folder (its latest checkpoint), a training
checkpoint, or a .pt / .safetensors export; always loaded weights-only.
"""

dependencies = ["torch", "numpy", "PIL", "scipy"]


def generator(path: str, device: str = "cpu", ema: bool = True):
    """The eval-mode ProGAN generator stored at `path`, on `device`, with its stage attached:
    `.resolution`, `.alpha`, `.info` (progan.checkpoints.GeneratorInfo) and `.sample(seeds)`."""
    import functools

    from progan.checkpoints import load_generator
    from progan.sampling import seeds_to_images

    model, info = load_generator(path, device=device, ema=ema)
    model.info, model.resolution, model.alpha = info, info.resolution, info.alpha
    model.sample = functools.partial(seeds_to_images, model, resolution=info.resolution, alpha=info.alpha)
    return model
