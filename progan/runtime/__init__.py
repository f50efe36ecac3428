"""Plumbing that knows nothing of GANs: stop signals, atomic files, progress lines, disk space,
the run lock, the process-group start, one-line errors and exit codes.

May import: the standard library and torch. Never anything else of progan.
"""
