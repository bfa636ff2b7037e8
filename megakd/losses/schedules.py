"""KD weight alpha as a function of the training step, and the LM/KD mix.

    loss = (1 - alpha) * LM + alpha * KD

`wsd` (warm-up, stable, decay) is the PD paper's best schedule: alpha rises linearly from `start`
to `peak` over the first `warmup` fraction of steps, stays at `peak`, then decays linearly to `end`
over the last `decay` fraction.
"""


def _check_alpha(**values):
    for name, v in values.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")


def _progress(step, total_steps):
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return min(max(step / total_steps, 0.0), 1.0)


def constant(step, total_steps=1, *, alpha=0.9):
    """alpha everywhere (PD paper's best static value is 0.9)."""
    _check_alpha(alpha=alpha)
    return float(alpha)


def linear(step, total_steps, *, start=0.0, end=1.0):
    """Linear from `start` at step 0 to `end` at total_steps (clamped outside)."""
    _check_alpha(start=start, end=end)
    return start + (end - start) * _progress(step, total_steps)


def wsd(step, total_steps, *, peak=1.0, warmup=0.1, decay=0.1, start=0.0, end=0.0):
    """Warm-up (fraction `warmup`), stable at `peak`, linear decay (last fraction `decay`) to `end`."""
    _check_alpha(peak=peak, start=start, end=end)
    if warmup < 0 or decay < 0 or warmup + decay > 1:
        raise ValueError(f"wsd needs warmup, decay >= 0 and warmup + decay <= 1, got {warmup}, {decay}")
    x = _progress(step, total_steps)
    if warmup > 0 and x < warmup:
        return start + (peak - start) * x / warmup
    if decay > 0 and x > 1 - decay:
        return peak + (end - peak) * (x - (1 - decay)) / decay
    return float(peak)


SCHEDULES = {"constant": constant, "linear": linear, "wsd": wsd}


def alpha_at(name, step, total_steps, **kwargs):
    """alpha of schedule `name` at `step` (of `total_steps`)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown alpha schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](step, total_steps, **kwargs)


def mix(lm_loss, kd_loss, alpha):
    """(1 - alpha) * LM + alpha * KD."""
    _check_alpha(alpha=float(alpha))
    return (1 - alpha) * lm_loss + alpha * kd_loss
