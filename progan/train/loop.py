"""The training loop: progressive growing on WGAN-GP, one code path from one CPU to many GPUs.

Design choices (and why):

* **Data parallel without DistributedDataParallel.** Every process builds identical networks
  from the same seed, computes gradients on its slice of the global batch, and the gradients
  are averaged with one all-reduce of a single flat buffer per network and step (as NVIDIA's
  StyleGAN3 code does). This is correct for growing networks (blocks unused at the current
  resolution simply have no gradient, on every rank alike), for the two D passes of a
  WGAN-GP step (reals and fakes together, then the penalty's mixes) and for the double
  backward of the penalty, and it needs no re-wrapping at each growth step. accelerate
  starts the processes, picks the devices and provides the gather and reduce used for
  statistics.
* **Randomness is a function of (seed, step).** Each step draws its latents, penalty mixing
  weights and mirror flips for the *global* batch from a generator on the device seeded with (seed, step),
  and each process takes its slice; the data order is a seeded permutation per epoch indexed
  by images shown. So a resumed run continues bit-for-bit (on CPU), two processes compute
  what one process computes with the same global batch, and a run can be resumed on a
  different number of processes.
* **Non-finite updates are never applied.** After the all-reduce every rank holds the same
  gradients, so all ranks take the same skip decision; fp16 uses a dynamic loss scale
  that halves on overflow.
* **Upkeep on ticks.** Losses are summed on the device and read once per tick; logging, sample
  grids and checkpoints run on the main process between steps. The step itself (progan/train/step.py)
  never reads a tensor to the host, so the device is never left waiting.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from progan.data.format import DatasetError
from progan.data.reader import (MultiResolutionDataset, database_identity, dataset_fingerprint, read_labels_for,
                                read_metadata, replaced_message)
from progan.generator import checkpoints
from progan.generator.images import make_grid, save_png, to_uint8
from progan.metrics import METRICS_WITH_REALS, GeneratorSource, evaluate_metrics, parse_metric_names, unavailable_reason
from progan.nets.layers import autocast
from progan.nets.networks import Discriminator, Generator
from progan.runtime.diskspace import WriteFailed, low_space_warning, write_failed
from progan.runtime.fileio import append_jsonl, atomic_write_text
from progan.runtime.progress import format_duration
from progan.runtime.runlock import share_from_main
from progan.runtime.signals import StopSignals, pause_point
from progan.shapes import describe_level
from progan.train.config import TrainConfig
from progan.train.device import apply_kernel_choices, configure_backends, kernel_choices
from progan.train.ema import make_ema
from progan.train.gradsync import GradientSync, LaggedFlags, LossScale
from progan.train.losses import discriminator_loss, generator_loss
from progan.train.microbatch import cuda_fits, largest_fitting, stddev_group
from progan.train.reals import DataOrder, RealImages, memory_budget_per_process
from progan.train.runfolder import SAMPLES_LATEST, STATS_FILE, sample_grid_side, samples_name
from progan.train.schedule import KIMG, TrainingState, state_at, tick_state
from progan.train.seeds import STREAM_GRID, derived_seed, seeded_generator
from progan.train.step import StepModels, StepSettings, StepStats, class_weights, micro_slices, run_step, step_inputs
from progan.train.trackers import log_image


class TrainingDiverged(Exception):
    """Every step of a whole tick was skipped as non-finite: the run cannot go on (train.py exits
    6), and stops without a checkpoint so the last good one stays the newest. One line."""


def _load_adam_state(optimizer: torch.optim.Adam, state: dict) -> None:
    """Load moments and step counts, but keep the kernel (fused or foreach) chosen for this
    device: load_state_dict would bring back whichever one the checkpoint was written with."""
    kernel = {key: optimizer.defaults[key] for key in ("fused", "foreach")}
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(kernel)
        on_param_device = bool(group["fused"] or group["capturable"])  # else steps live on the CPU
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            if "step" in param_state:
                param_state["step"] = param_state["step"].to(
                    device=param.device if on_param_device else "cpu", dtype=torch.float32)


class Trainer:
    def __init__(self, config: TrainConfig, accelerator, resume: dict | None = None, log=print,
                 stop: StopSignals | None = None) -> None:
        self.accelerator = accelerator
        self.log = log
        self.device = accelerator.device
        if config.mixed_precision == "auto":  # resolved once, where the run is set up (setup.prepare_run)
            raise ValueError("Trainer needs a concrete --mixed-precision (no, fp16 or bf16): pass the config "
                             "through progan.train.precision.resolve_config(config, device) first")
        self.config = config
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.run_dir = Path(config.out)
        self.sync = GradientSync(self.world_size)
        # This process's share of every global batch. Strided, not contiguous: minibatch-stddev
        # groups are strided too (sample n is in group n % (N / G), as in the paper's code), so
        # every group of the global batch lands whole on one process, and N processes (or
        # gradient-accumulation rounds) compute exactly the groups one process would.
        self.part = slice(self.rank, None, self.world_size)
        # train.py's handler, installed since its first line; built directly, the trainer's own
        # (installed for the loop only). Either way a repeated signal never cuts the final checkpoint short.
        self.stop = stop if stop is not None else StopSignals(during_setup=False)
        self.write_failure: str | None = None  # set on the main process by a failed upkeep write

        metadata = read_metadata(config.data)
        self.num_images = int(metadata["count"]) if "count" in metadata else len(
            MultiResolutionDataset(config.data, config.schedule.start_resolution))
        self.fingerprint = dataset_fingerprint(config.data)
        self.data_identity = database_identity(config.data)  # a database built again in its place is another file
        self.order = DataOrder(config.seed, self.num_images)
        # Conditional models: the reals' labels (all of them, on the CPU: one small integer per
        # image) and the class frequencies the generator step's labels are drawn with.
        self.labels, self.class_frequencies = None, None
        if config.model.conditional:
            labels = read_labels_for(config.data, config.model.class_names)
            self.labels = torch.from_numpy(labels.astype("int64"))
            counts = torch.bincount(self.labels, minlength=config.model.label_size)
            self.class_frequencies = class_weights(counts, self.device)

        torch.manual_seed(derived_seed(config.seed, 0, 0))  # identical initial weights on every rank
        model = config.model
        self.G = Generator(model).to(self.device)
        self.D = Discriminator(model).to(self.device)
        choices = kernel_choices(self.device.type)  # same function, this device's fastest kernels
        apply_kernel_choices(self.G, choices)
        apply_kernel_choices(self.D, choices)
        configure_backends(self.device, tf32=config.tf32)
        self.G_ema = make_ema(self.G)

        fp16 = config.mixed_precision == "fp16"
        self.scale_d, self.scale_g = LossScale(fp16, device=self.device), LossScale(fp16, device=self.device)
        self.step_settings = StepSettings.from_config(config)
        self.stats = StepStats(self.device)
        self.flags = LaggedFlags(self.device)

        self.images_shown = 0
        self.step = 0
        self.training_seconds = 0.0
        self.ticks = 0
        optimizer_states, saved_optimizer_phase = None, None
        if resume is not None:
            optimizer_states, saved_optimizer_phase = self._load(resume)

        self.state = state_at(config.schedule, self.images_shown)
        self._new_optimizers(self.state)
        # A checkpoint taken right at a phase edge holds the old phase's optimizer state,
        # which the uninterrupted run would have reset at that edge: do the same here.
        if optimizer_states is not None and (
            self.optimizer_phase == saved_optimizer_phase or not config.reset_optimizer
        ):
            _load_adam_state(self.opt_g, optimizer_states[0])
            _load_adam_state(self.opt_d, optimizer_states[1])
            self._set_learning_rate(self.state.learning_rate)
        self.reals = self._real_images(self.state)
        self.micro_batch = self._micro_batch(self.state)
        if self.world_size > 1 and self.accelerator.is_local_main_process:  # one line per node
            print(f"node {os.environ.get('GROUP_RANK', '0')}: {os.environ.get('LOCAL_WORLD_SIZE', '1')} of "
                  f"{self.world_size} processes, real-image memory budget {memory_budget_per_process() >> 20} MiB "
                  f"per process", flush=True)
        self.grid_latents = torch.randn(
            64, model.latent_size, generator=seeded_generator(config.seed, STREAM_GRID, 0))
        self._reset_tick_stats()

    # -- setup helpers ---------------------------------------------------------------------
    def _adam(self, module: torch.nn.Module, lr: float) -> torch.optim.Adam:
        c = self.config
        # The fused kernel is 2-10% faster per training step than foreach (bench/RESULTS.md,
        # "Networks"); it exists for CPU and CUDA parameters.
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(float(c.adam_beta1), float(c.adam_beta2)),
                                eps=float(c.adam_eps), **fused)

    def _new_optimizers(self, state: TrainingState) -> None:
        """Fresh Adam state at each phase start (the paper's default), or only the new learning rate."""
        if self.config.reset_optimizer or not hasattr(self, "opt_g"):
            self.opt_g = self._adam(self.G, state.learning_rate)
            self.opt_d = self._adam(self.D, state.learning_rate)
        else:
            self._set_learning_rate(state.learning_rate)
        self.optimizer_phase = state.phase.index

    def _set_learning_rate(self, lr: float) -> None:
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr

    def _real_images(self, state: TrainingState) -> RealImages:
        return RealImages(self.config.data, state.resolution, self.order, self.images_shown,
                          state.batch_size, self.part, self.config.workers, memory_budget_per_process())

    @property
    def skipped_d(self) -> int:  # a host read: for ticks and checkpoints
        return int(self.stats.skipped[0])

    @property
    def skipped_g(self) -> int:
        return int(self.stats.skipped[1])

    @property
    def _tick_sums(self) -> torch.Tensor:
        return self.stats.sums

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.step_settings.autocast_dtype

    # -- checkpoints ------------------------------------------------------------------------
    def _load(self, data: dict):
        """Restore everything from a loaded training checkpoint (checked by progan.train.setup)."""
        self.G.load_state_dict(data["generator"])
        self.D.load_state_dict(data["discriminator"])
        self.G_ema.load_state_dict(data["generator_ema"])
        self.scale_d.load_state_dict(data["loss_scale_d"])
        self.scale_g.load_state_dict(data["loss_scale_g"])
        counters = data["counters"]
        self.images_shown = int(data["images_shown"])
        self.step = int(counters["step"])
        self.stats.skipped.copy_(torch.tensor([int(counters["skipped_d"]), int(counters["skipped_g"])]))
        self.training_seconds = float(counters["training_seconds"])
        self.ticks = int(counters["ticks"])
        if self.world_size != int(counters.get("world_size", self.world_size)):
            self.log(f"note: resuming a {counters['world_size']}-process run on {self.world_size} processes "
                     f"(the run continues, but not bit-for-bit)")
        return (data["optimizer_g"], data["optimizer_d"]), int(counters["optimizer_phase"])

    def checkpoint_state(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "model_config": self.config.model.to_dict(),
            "images_shown": self.images_shown,
            "resolution": self.state.resolution,
            "alpha": self.state.alpha,
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "generator_ema": self.G_ema.state_dict(),
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "loss_scale_d": self.scale_d.state_dict(),
            "loss_scale_g": self.scale_g.state_dict(),
            "counters": {
                "step": self.step, "skipped_d": self.skipped_d, "skipped_g": self.skipped_g,
                "training_seconds": self.training_seconds, "ticks": self.ticks,
                "world_size": self.world_size, "optimizer_phase": self.optimizer_phase,
            },
            "dataset_fingerprint": self.fingerprint,
        }

    def verify_replicas(self) -> None:
        """Check that every process holds bit-identical networks (they must, after all-reduce)."""
        if self.world_size == 1:
            return
        sums = [p.detach().double().sum() for m in (self.G, self.D, self.G_ema) for p in m.parameters()]
        local = torch.stack(sums)[None]  # [1, P]
        gathered = self.accelerator.gather(local)  # [world, P]
        if not bool((gathered == gathered[:1]).all()):
            raise RuntimeError("the processes' networks have diverged; this is a bug, please report it")

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint on the main process; a failed write (disk full) stops every process
        with one line (WriteFailed), the previous checkpoints untouched."""
        self.verify_replicas()
        path, error = None, None
        if self.is_main:
            try:
                state = self.checkpoint_state()
                latest = checkpoints.find_latest_checkpoint(self.run_dir)
                warning = low_space_warning(self.run_dir, latest.stat().st_size) if latest else None
                if warning:
                    self.log(warning)
                path = checkpoints.save_training_checkpoint(self.run_dir, state, keep=self.config.keep_checkpoints)
            except WriteFailed as exc:
                error = str(exc)
        error = share_from_main(error, self.world_size)  # also the barrier after the write
        if error is not None:
            raise WriteFailed(error)
        self._last_checkpoint_time = time.monotonic()
        return path

    def _upkeep_write(self, what: str, write) -> None:
        """Run a main-process upkeep write (stats line, sample grid); if it fails, say so and stop
        the run at the next step (the stop flag reaches every process) with a last checkpoint."""
        try:
            write()
        except OSError as exc:
            if self.write_failure is None:
                self.write_failure = str(write_failed(exc, self.run_dir, what, None))
                self.log(f"error: {self.write_failure}; stopping")
            self.stop.requested = True

    # -- one step --------------------------------------------------------------------------
    def train_step(self, flags: list[float]) -> list[float]:
        """One whole step (D step, G step, EMA) by progan.train.step.run_step; returns the flags summed
        over processes (one process: as given; several: the previous step's, see LaggedFlags)."""
        st = self.state
        inputs = step_inputs(self.config.seed, self.step, st.batch_size, self.config.model.latent_size,
                             self.part, self.device, class_frequencies=self.class_frequencies)
        real_labels = None
        if self.labels is not None:  # the same indices the reals of this step were read from
            indices = torch.from_numpy(self.order.indices(self.images_shown, st.batch_size)[self.part])
            real_labels = self.labels[indices].to(self.device, non_blocking=True)
        reals = self.reals.next()
        if self.device.type == "cuda" and not reals.is_pinned():  # in-memory levels: a pageable copy would wait
            reals = reals.pin_memory()
        reals = reals.to(self.device, non_blocking=True)
        micro = micro_slices(reals.shape[0], self.micro_batch)
        models = StepModels(self.G, self.D, self.G_ema, self.opt_g, self.opt_d, self.scale_d, self.scale_g, self.sync)
        flags = run_step(models, self.step_settings, reals, inputs, st.resolution, st.alpha, micro, self.stats, flags,
                         real_labels=real_labels)
        if isinstance(flags, torch.Tensor):
            flags = self.flags.push(flags)
        self.images_shown += st.batch_size
        self.step += 1
        return flags

    def _micro_batch(self, state: TrainingState) -> int | None:
        """The micro-batch for a phase: --max-batch-per-device, or with auto the largest that fits
        on CUDA (measured now, at the phase start) and no limit elsewhere."""
        cap = self.config.max_batch_per_device
        if cap != "auto":
            return cap
        if self.device.type != "cuda":
            return None  # host memory is not probed: the whole local batch
        local = state.batch_size // self.world_size
        need = stddev_group(self.config.model.mbstd_group_size, state.batch_size)
        micro = largest_fitting(local, need, cuda_fits(lambda m: self._trial_pass(state, m), self.device))
        if self.world_size > 1:  # every process splits alike: the smallest that fits everywhere
            shared = torch.tensor([micro], device=self.device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MIN)
            micro = int(shared.item())
        if self.is_main:
            self.log(f"micro-batch {micro} of {local} per device at {describe_level(self.config.model.aspect, state.resolution)} "
                     f"(--max-batch-per-device auto)")
        return micro

    def _trial_pass(self, state: TrainingState, micro: int) -> None:
        """Both losses' forward and backward at a micro-batch of `micro` (more memory than a real
        step holds at once), with throwaway inputs; the weights and every RNG are left untouched."""
        c, s, res, alpha = self.config.model, self.step_settings, state.resolution, state.alpha
        gen = torch.Generator(device=self.device).manual_seed(0)
        z = torch.randn(micro, c.latent_size, generator=gen, device=self.device)
        reals = torch.rand(micro, c.num_channels, res, res, generator=gen, device=self.device) * 2 - 1
        try:
            with autocast(self.device, s.autocast_dtype):
                fakes = self.G(z, resolution=res, alpha=alpha)
                loss, _ = discriminator_loss(self.D, reals, fakes, res, alpha, s.gp_weight, s.gp_target,
                                             s.drift_weight, mix_weights=torch.rand(micro, generator=gen, device=self.device))
            loss.backward()
            with autocast(self.device, s.autocast_dtype):
                loss_g = generator_loss(self.D(fakes, resolution=res, alpha=alpha).float())
            loss_g.backward()
        finally:
            self.G.zero_grad(set_to_none=True)
            self.D.zero_grad(set_to_none=True)

    def _enter_state(self, new_state: TrainingState) -> None:
        """Switch phase when the schedule says so: new loader, new batch size, new learning rate."""
        old = self.state
        self.state = new_state
        if new_state.phase.index == old.phase.index:
            return
        pause_point("phase")  # tests: the database is replaced here
        self.check_same_database()  # before a level of another database is read
        self._new_optimizers(new_state)
        self.micro_batch = self._micro_batch(new_state)
        if new_state.resolution != old.resolution or new_state.batch_size != old.batch_size:
            self.reals = self._real_images(new_state)
        if self.is_main:
            p = new_state.phase
            self.log(f"phase {p.index}: {p.kind} {describe_level(self.config.model.aspect, p.resolution)} from {p.start_images / KIMG:.1f} kimg, "
                     f"batch {new_state.batch_size}, lr {new_state.learning_rate:g}")

    def database_replaced(self) -> str | None:
        """One line when the run's database was deleted or built again in its place since the start
        (a damaged read is then no damage of the run's own database); None when it is the same file."""
        if database_identity(self.config.data) == self.data_identity:
            return None
        return replaced_message(self.config.data, self.fingerprint)

    def check_same_database(self) -> None:
        replaced = self.database_replaced()
        if replaced:
            raise DatasetError(replaced)

    # -- upkeep ----------------------------------------------------------------------------
    def _reset_tick_stats(self) -> None:
        self.stats.reset_sums()
        self._tick_start_time = time.monotonic()
        self._tick_start_images = self.images_shown
        self._tick_start_skipped = self.stats.skipped.tolist()  # a host read, once a tick

    def _check_progress(self, steps: int) -> None:
        """Raise TrainingDiverged when every D step or every G step of the tick just ended was skipped
        as non-finite (fp16: once its loss scale has fallen to 1, the scale no longer explains it)."""
        if steps == 0:
            return
        skipped = [now - before for now, before in zip(self.stats.skipped.tolist(), self._tick_start_skipped)]
        stuck = [name for name, n, scale in zip("DG", skipped, (self.scale_d, self.scale_g))
                 if n >= steps and not (scale.enabled and scale.value() > 1.0)]
        if not stuck:
            return
        latest = checkpoints.find_latest_checkpoint(self.run_dir) if self.is_main else None
        kept = f"the last good checkpoint {latest.name} is kept" if latest else "no checkpoint was written"
        raise TrainingDiverged(
            f"every {' and '.join(stuck)} step of tick {self.ticks} ({steps} steps, to "
            f"{self.images_shown / KIMG:.3f} kimg) was skipped as non-finite (NaN or inf): training "
            f"cannot go on; stopped without saving, {kept}. Lower the learning rate (or use "
            f"--mixed-precision no), then rerun with --resume auto")

    def tick(self) -> dict:
        """Gather statistics, write the log line and stats.jsonl; returns the stats."""
        self.ticks += 1
        sums = self.accelerator.reduce(self.stats.sums.clone(), reduction="mean")
        steps = max(self.stats.steps, 1)
        loss_d, wdist, gp, real_score, fake_score, loss_g = (sums / steps).tolist()
        class_terms = {}
        if self.labels is not None:  # the class terms as added to loss_d and loss_g
            class_d, class_g = (self.accelerator.reduce(self.stats.class_sums.clone(), reduction="mean") / steps).tolist()
            class_terms = {"class_loss_d": class_d, "class_loss_g": class_g}
        seconds = time.monotonic() - self._tick_start_time
        images = self.images_shown - self._tick_start_images
        self.training_seconds += seconds
        rate = images / seconds if seconds > 0 else 0.0
        remaining = max(self.config.schedule.total_images - self.images_shown, 0)
        st = tick_state(self.config.schedule, self.images_shown)  # the phase of the steps just taken
        stats = {
            "kind": "tick", "tick": self.ticks, "kimg": round(self.images_shown / KIMG, 3), "images_shown": self.images_shown,
            "resolution": st.resolution, "alpha": round(st.alpha, 5), "phase": st.phase.kind,
            "batch": st.batch_size, "lr": st.learning_rate, "images_per_s": round(rate, 2),
            "sec_per_kimg": round(KIMG / rate, 3) if rate > 0 else None,
            "eta_s": round(remaining / rate) if rate > 0 else None,
            "loss_d": loss_d, "loss_g": loss_g, "wasserstein": wdist, "gradient_penalty": gp,
            "score_real": real_score, "score_fake": fake_score, **class_terms,
            "skipped_d": self.skipped_d, "skipped_g": self.skipped_g,
            "loss_scale": self.scale_d.value() if self.scale_d.enabled else 1.0, "training_s": round(self.training_seconds, 1),
            "processes": self.world_size,
        }
        if self.is_main:
            eta = format_duration(stats["eta_s"]) if stats["eta_s"] is not None else "?"
            self.log(
                f"tick {self.ticks:<4d} kimg {stats['kimg']:<9.1f} res {st.resolution:<4d} alpha {st.alpha:.3f}  "
                f"{rate:7.1f} img/s  {stats['sec_per_kimg'] or 0:6.2f} s/kimg  ETA {eta:>9}  "
                f"D {loss_d:+.3f}  G {loss_g:+.3f}  gp {gp:.3f}  "
                + (f"cls {class_terms['class_loss_d']:.3f}/{class_terms['class_loss_g']:.3f}  " if class_terms else "")
                + f"skipped {self.skipped_d}/{self.skipped_g}")
            self._upkeep_write(STATS_FILE, lambda: append_jsonl(self.run_dir / STATS_FILE, stats))
            if getattr(self.accelerator, "trackers", None):  # step in images: ticks may be < 1 kimg
                self._upkeep_write("the trackers' logs", lambda: self.accelerator.log(
                    {k: v for k, v in stats.items() if isinstance(v, (int, float))}, step=self.images_shown))
        self._check_progress(self.stats.steps)
        self._reset_tick_stats()
        return stats

    def evaluate_metrics(self) -> dict | None:
        """The configured metrics of the EMA generator, sharded over processes; logged by the main one."""
        c, st = self.config, self.state
        # The names as validated at setup: lower case, duplicates dropped ("SWD,swd" is swd).
        names = [n for n in parse_metric_names(c.metrics)
                 if unavailable_reason(n, st.resolution, inception_path=c.inception, aspect=c.model.aspect) is None]
        if not names:
            return None
        started = time.monotonic()
        source = GeneratorSource(self.G_ema, c.model.latent_size, resolution=st.resolution, alpha=st.alpha,
                                 seed=c.seed, device=self.device,
                                 class_frequencies=None if self.labels is None else self.class_frequencies.cpu())
        results = evaluate_metrics(
            names, source, self.reals.dataset, st.resolution, c.metric_images, rank=self.rank,
            world_size=self.world_size, all_gather=self.accelerator.gather,
            cache_dir=self.run_dir / "metric-cache", seed=c.seed, inception_path=c.inception,
            device=self.device, progress=False, aspect=c.model.aspect,
            mirror_reals=c.mirror)  # reals as training saw them (as the release evaluates)
        seconds = time.monotonic() - started
        self._tick_start_time += seconds  # evaluation time is not training time
        if self.is_main:
            record = {"kind": "metrics", "kimg": round(self.images_shown / KIMG, 3),
                      "images_shown": self.images_shown, "resolution": st.resolution,
                      "alpha": round(st.alpha, 5), "num_images": c.metric_images,
                      **({"mirror_reals": c.mirror} if set(names) & set(METRICS_WITH_REALS) else {}),  # reals read
                      "seconds": round(seconds, 1), **results}
            self._upkeep_write(STATS_FILE, lambda: append_jsonl(self.run_dir / STATS_FILE, record))
            self.log("metrics " + "  ".join(f"{k} {v:.4g}" for k, v in results.items()) + f"  ({seconds:.0f} s)")
            if getattr(self.accelerator, "trackers", None):
                self._upkeep_write("the trackers' logs", lambda: self.accelerator.log(
                    {f"metrics/{k}": v for k, v in results.items()}, step=self.images_shown))
        return results

    @torch.no_grad()
    def save_sample_grid(self) -> Path | None:
        """A grid from the EMA generator at fixed latents, at the resolution and alpha of the step
        that just ended (schedule.tick_state: the rule the tick line and the timelapse use)."""
        if not self.is_main:
            return None
        st = tick_state(self.config.schedule, self.images_shown)
        res, alpha = st.resolution, st.alpha
        side = sample_grid_side(res)
        latents = self.grid_latents[: side * side].to(self.device)
        chunk = max(st.batch_size, 4)
        if self.labels is None:
            images = [self.G_ema(z, resolution=res, alpha=alpha).float().cpu() for z in latents.split(chunk)]
        else:  # one class per row, cycling through the classes
            labels = (torch.arange(side * side, device=self.device) // side) % self.config.model.label_size
            images = [self.G_ema(z, resolution=res, alpha=alpha, labels=y).float().cpu()
                      for z, y in zip(latents.split(chunk), labels.split(chunk))]
        grid = make_grid(to_uint8(torch.cat(images)), rows=side, cols=side)
        path = self.run_dir / samples_name(self.images_shown)
        save_png(grid, path)
        save_png(grid, self.run_dir / SAMPLES_LATEST)

        log_image(self.accelerator, "samples", grid, step=self.images_shown)
        return path

    def truncate_stats(self) -> None:
        """After a resume, drop log lines from work the checkpoint does not hold."""
        path = self.run_dir / STATS_FILE
        if not self.is_main or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["images_shown"] <= self.images_shown:  # tick and metric lines alike
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the end of the schedule or until stopped; returns 'finished' or 'stopped'."""
        c = self.config
        total = c.schedule.total_images
        tick_images = max(1, round(c.tick_kimg * KIMG))
        next_tick = (self.images_shown // tick_images + 1) * tick_images
        metric_images = round(c.metric_kimg * KIMG) if c.metrics and c.metric_kimg > 0 else 0
        next_metric = (self.images_shown // metric_images + 1) * metric_images if metric_images else None
        self._last_checkpoint_time = time.monotonic()
        installed = self.stop.install()  # kept until the last checkpoint is safe (a 2nd signal waits for it)
        self.stop.training()
        outcome = "finished"
        try:
            while self.images_shown < total:
                self._enter_state(state_at(c.schedule, self.images_shown))
                checkpoint_due = (time.monotonic() - self._last_checkpoint_time) / 60 >= c.checkpoint_minutes
                flags = self.train_step([float(self.stop.requested), float(checkpoint_due and self.is_main)])
                stop_now, save_now = flags[0] > 0, flags[1] > 0
                if self.images_shown >= next_tick or self.images_shown >= total or stop_now:
                    self.tick()
                    next_tick = (self.images_shown // tick_images + 1) * tick_images
                    if self.ticks % c.snapshot_ticks == 0 and self.images_shown < total and not stop_now:
                        self._upkeep_write("a sample grid", self.save_sample_grid)
                        save_now = True
                if next_metric is not None and self.images_shown >= next_metric and not stop_now:
                    self.evaluate_metrics()
                    next_metric = (self.images_shown // metric_images + 1) * metric_images
                if stop_now:
                    outcome = "stopped"
                    break
                if save_now:
                    self.save_checkpoint()
            # The last checkpoint records the stage of the step that ended here, as every periodic
            # checkpoint and grid does (schedule.tick_state): one alpha per image count.
            self.state = tick_state(c.schedule, self.images_shown) if self.images_shown else self.state
            if outcome == "stopped":  # tests: a second signal lands here, before the last checkpoint
                pause_point("stopping", until=lambda: getattr(self.stop, "repeats", 0) > 0)
            self._upkeep_write("a sample grid", self.save_sample_grid)
            path = self.save_checkpoint()
        except DatasetError as exc:  # a record read from a database replaced under the run: say that
            raise DatasetError(self.database_replaced() or str(exc)) from None
        finally:
            if installed:
                self.stop.uninstall()
        failure = share_from_main(self.write_failure, self.world_size)
        if failure is not None:
            raise WriteFailed(f"{failure} (stopped at {self.images_shown / KIMG:.3f} kimg, checkpoint {path} saved)")
        if self.is_main:
            how = f"stopped by {self.stop.signal_name or 'a request on another process'}" if outcome == "stopped" else "finished"
            replicas = f", {self.world_size} replicas identical" if self.world_size > 1 else ""
            repeats = getattr(self.stop, "repeats", 0)
            waited = f" ({repeats} more signal(s) waited for it)" if repeats else ""
            self.log(f"{how} at {self.images_shown / KIMG:.1f} kimg; checkpoint {path}{replicas}{waited}")
        return outcome
