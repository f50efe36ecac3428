"""Training: the run's set-up and its typed config, the loop (Trainer), one step, the schedule,
losses, EMA, gradient sync, precision, per-device choices, micro-batches, reals and trackers.

May import: progan.nets, progan.data, progan.generator, progan.metrics, progan.runtime, progan.shapes.
"""
