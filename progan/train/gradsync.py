"""Gradient averaging over processes, the fp16 loss scale, and stop requests: what the
processes of one run agree on at every step.

All of it stays on the device: the finiteness of the averaged gradients is a device tensor that
the fused optimizers take as `found_inf` (they skip the update when it is non-zero, as
GradScaler does), and the loss scale is updated on the device, so a step never waits for the host.
"""

from __future__ import annotations


import torch


class LossScale:
    """Dynamic loss scale for fp16: halve on overflow, double after `growth_interval` clean steps.

    Scale and clean-step count live on the device and `update` takes the device flag `found_inf`,
    so the step never reads them; checkpoints read them (state_dict). Disabled, the scale is 1.0.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**14, growth_interval: int = 1000,
                 device: torch.device | str = "cpu") -> None:
        self.enabled = enabled
        self.growth_interval = growth_interval
        self.scale: torch.Tensor | float = torch.full((), init_scale, device=device) if enabled else 1.0
        self.good_steps = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, found_inf: torch.Tensor) -> None:
        if not self.enabled:
            return
        bad = found_inf.reshape(()) > 0
        good = torch.where(bad, 0, self.good_steps + 1)
        grow = good >= self.growth_interval
        scale = torch.where(bad, (self.scale / 2.0).clamp(min=1.0),
                            torch.where(grow, (self.scale * 2.0).clamp(max=2.0**24), self.scale))
        self.scale.copy_(scale)
        self.good_steps.copy_(torch.where(grow, 0, good))

    def value(self) -> float:
        """The scale as a number (a host read: for logs and checkpoints only)."""
        return float(self.scale)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "scale": self.value(), "good_steps": int(self.good_steps)}

    def load_state_dict(self, state: dict) -> None:
        if self.enabled and state.get("enabled"):
            self.scale.fill_(float(state["scale"]))
            self.good_steps.fill_(int(state["good_steps"]))


def _inverse(scale: torch.Tensor | float, divisor: int, device: torch.device) -> torch.Tensor:
    """1 / (scale * divisor) as a 0-dim fp32 tensor on `device`, without a host read."""
    if isinstance(scale, torch.Tensor):
        return (1.0 / (scale.float() * divisor)).reshape(()).to(device)
    return torch.full((), 1.0 / (scale * divisor), device=device)


def unscale_and_check(grads: list[torch.Tensor], inverse_scale: torch.Tensor) -> torch.Tensor:
    """Multiply grads by inverse_scale in place; returns found_inf, 0-dim (1.0 if any is non-finite)."""
    device = grads[0].device if grads else inverse_scale.device
    found_inf = torch.zeros((), device=device)
    if not grads:
        return found_inf
    if device.type in ("cpu", "cuda"):  # one fused pass, the kernel GradScaler uses
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inverse_scale)
        return found_inf
    torch._foreach_mul_(grads, inverse_scale)
    finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
    return found_inf.copy_((~finite).float())


def step_unless_non_finite(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """optimizer.step(), a no-op when found_inf is non-zero: decided on the device for fused
    kernels (they take found_inf as GradScaler passes it, and undo their step count); other
    optimizers need one host read."""
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = found_inf.reshape(())  # the shape of the step counts it is subtracted from
        optimizer.step()
    elif found_inf.device.type == "meta" or not bool(found_inf.item()):  # meta (FLOP counts): no values
        optimizer.step()


class GradientSync:
    """Averages gradients over processes through one flat buffer, and shares control flags.

    The flags (stop requested, checkpoint due) ride along in the same all-reduce, so every
    process learns them at the same step with no extra collective. Nothing is read to the host:
    `reduce` returns device tensors.
    """

    NUM_FLAGS = 2

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def reduce(self, params: list[torch.nn.Parameter], scale: torch.Tensor | float, flags: list[float] | None = None):
        """Average (and unscale) the grads in place; returns (found_inf, 0-dim on the device, flags).

        One process: the flags come back as given (a list). Several: a device tensor of the
        flags summed over processes (the caller decides when to read it).
        """
        grads = [p.grad for p in params if p.grad is not None]
        device = grads[0].device if grads else torch.device("cpu")
        if self.world_size == 1:
            # Nothing to average or share: unscale and check in place, no flat copy out and back.
            return unscale_and_check(grads, _inverse(scale, 1, device)), list(flags or [0.0] * self.NUM_FLAGS)
        flag_values = torch.tensor(flags or [0.0] * self.NUM_FLAGS, dtype=torch.float32).to(device, non_blocking=True)
        if not grads:
            torch.distributed.all_reduce(flag_values)
            return torch.zeros((), device=device), flag_values
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [flag_values])
        torch.distributed.all_reduce(flat)
        flat_grads = flat[: -self.NUM_FLAGS]
        found_inf = unscale_and_check([flat_grads], _inverse(scale, self.world_size, device))
        torch._foreach_copy_(grads, [chunk.view_as(g) for chunk, g in zip(flat_grads.split([g.numel() for g in grads]), grads)])
        return found_inf, flat[-self.NUM_FLAGS :]


class LaggedFlags:
    """The flags summed over processes at step k, read on the host after step k+1 is queued.

    Reading them at once would make every step wait for the device; one step late, the copy has
    long finished. Every process reads the same sums at the same step, so all stop (or save)
    together, one step after the request.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        pinned = device.type == "cuda"
        self._host = torch.zeros(GradientSync.NUM_FLAGS, pin_memory=pinned)
        self._event = torch.cuda.Event() if pinned else None
        self._pending = False

    def push(self, flags: torch.Tensor) -> list[float]:
        """Queue the copy of this step's flags; return the previous step's (zeros at the first)."""
        previous = self.read()
        self._host.copy_(flags.detach(), non_blocking=self._event is not None)
        if self._event is not None:
            self._event.record()
        self._pending = True
        return previous

    def read(self) -> list[float]:
        if not self._pending:
            return [0.0] * GradientSync.NUM_FLAGS
        if self._event is not None:
            self._event.synchronize()  # the copy queued a step ago: done long since
        return self._host.tolist()
