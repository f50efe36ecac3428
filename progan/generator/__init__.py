"""A trained generator's files and what it makes:

    fileformat.py        the format of every model file: header, checksums, the weights-only loader
    checkpoints.py       a run's training checkpoints: written atomically, found, read back
    loading.py           load_generator: a ready generator from a run folder, checkpoint or export
    export.py            export_file (the format by extension) and .pt exports
    safetensors_file.py  .safetensors exports, written and read
    onnx_file.py         .onnx exports, and running them with onnxruntime
    sampling.py          seeds -> latents -> images, classes, walks
    images.py            uint8 images, grids, PNG files
    animation.py         GIF and WebP files

May import: progan.nets, progan.runtime, progan.shapes.
"""
