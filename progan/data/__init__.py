"""The multi-resolution LMDB database, in one place, so writer and reader cannot disagree:

    format.py        keys, encodings, checksums, the pyramid rule, the errors
    lmdbfile.py      LMDB's data file from outside: meta pages and the size guard (no Bus errors)
    environments.py  one read-only environment per (database, process), safe across fork()
    reader.py        metadata, labels, checked records, MultiResolutionDataset
    writer.py        DatasetWriter, the resumable builder `data_prep build` drives
    integrity.py     the scans (verify, the trainer's start and background checks), each run in a
                     child process: `python -m progan.data.integrity`

May import: progan.runtime, progan.shapes. torch only where tensors are made (reader.py, on
first use), so data_prep's workers stay light.

A database is an LMDB environment folder (e.g. `faces.lmdb/`) holding:

    meta                canonical JSON metadata (`read_metadata`); written last, so a database
                        without it is an unfinished build
    {R}-{i:08d}         image i at resolution R: RGB uint8 pixels in HWC order, encoded as
                        metadata["encoding"] says (see ENCODINGS); R x R, or for a non-square
                        database (metadata["aspect"], e.g. "3:4") level_size(aspect, R)
    crc32/{R}           crc32 of every record of level R as stored, uint32 little-endian in index
                        order; metadata["checksums"] holds each table's own crc32. Databases built
                        before checksums have neither and are read unchecked.
    labels              labelled builds only: the class of image i (the same picture at every
                        level), uint32 little-endian in index order; metadata["classes"] holds the
                        class names (index = position), metadata["label_table"] the table's crc32.
                        Unlabelled databases have none of the three.
    build/state         progress of an unfinished build (removed when the build finishes)
    build/chunk/{n:08d} what chunk n of an unfinished build committed (removed likewise)

Every level below the top is the 2x2 box average of the stored level above, in exact
arithmetic, rounded half up (what PIL's `Image.reduce(2)` computes). So average-pooling a stored
level and rounding gives exactly the next stored level, which is what the trainer's fade-in of
real images assumes.
"""
