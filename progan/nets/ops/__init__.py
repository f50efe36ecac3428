"""Custom ops, each a small file with its reference test against the plain PyTorch computation
(tests/test_ops_*.py): the fast paths the networks call, kept out of the layers."""

from progan.nets.ops.conv import conv2d, conv_transpose2d, input_gradients_only

__all__ = ["conv2d", "conv_transpose2d", "input_gradients_only"]
