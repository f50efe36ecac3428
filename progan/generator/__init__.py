"""A trained generator's files and what it makes: checkpoint files and their format, loading a
generator, exports, seeds -> images, grids, walks and a run's timelapse.

May import: progan.nets, progan.runtime, progan.shapes.
"""
