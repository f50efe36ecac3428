"""Training: a run from flags to checkpoints.

    setup.py       flags -> a validated RunPlan (config, resume, devices, trackers); starts the Trainer
    config.py      TrainConfig: every setting of a run, typed, saved as config.json
    loop.py        Trainer: the loop, ticks, snapshots, checkpoints, metrics on schedule
    step.py        one step (D step with penalty and drift, G step, EMA): the loop and every benchmark call it
    schedule.py    images shown -> phase, resolution, fade weight, batch, learning rate
    losses.py      WGAN-GP: critic loss, gradient penalty, drift, generator loss
    ema.py         the generator's moving average
    gradsync.py    gradient averaging over processes, the fp16 loss scale
    precision.py   --mixed-precision: the device's choice, autocast dtypes
    device.py      backend switches and kernel choices per device kind
    microbatch.py  micro-batches that keep D's minibatch statistic; `auto` sizing on CUDA
    seeds.py       every random stream derived from (seed, stream, step)
    reals.py       real images: data order, reading, the fade of reals
    trackers.py    --log-with through accelerate's trackers
    runfolder.py   the run folder's layout (config.json, samples-*.png, stats.jsonl)
    timelapse.py   a run's growth as one animation, from what its folder records

May import: progan.nets, progan.data, progan.generator, progan.metrics, progan.runtime, progan.shapes.
"""
