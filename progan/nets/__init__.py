"""The networks: the model configuration (ModelConfig), the equalized-LR layers, G and D, and
`ops/` (custom autograd ops beside the layers that call them, each with its reference test).

May import: progan.runtime, progan.shapes.
"""
