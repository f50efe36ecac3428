"""progan: Progressive Growing of GANs (Karras et al., ICLR 2018) in PyTorch.

Public names are imported lazily so that `import progan` stays cheap (data_prep workers
import the data format without paying for the networks) and so a half-installed tree
fails only where it is used.
"""

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "progan.nets.config",
    "Generator": "progan.nets.networks",
    "Discriminator": "progan.nets.networks",
    "MultiResolutionDataset": "progan.data.reader",
    "load_generator": "progan.generator.loading",
    "seeds_to_images": "progan.generator.sampling",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'progan' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
