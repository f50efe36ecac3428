"""Dataset tools for progan: `python -m data_prep build|info|verify|preview|synth`.

`build` turns a folder of images into the multi-resolution LMDB that `progan.data` reads;
the format itself lives in `progan.data`, so writer and reader cannot disagree.

May import: progan.data, progan.generator (the preview's image grid), progan.runtime, progan.shapes.
"""
