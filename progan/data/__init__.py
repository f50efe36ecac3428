"""The multi-resolution LMDB format, in one place: its keys and encodings, the reader
(MultiResolutionDataset), the resumable writer data_prep drives, and the integrity scans.

May import: progan.runtime, progan.shapes. No torch at import time: data_prep's workers use it.
"""
