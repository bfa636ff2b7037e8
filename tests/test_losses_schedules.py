"""megakd.losses.schedules: alpha(step) and the LM/KD mix."""

import pytest
import torch

from megakd.losses import schedules


def test_constant_and_linear():
    assert schedules.constant(123, 1000, alpha=0.9) == 0.9
    assert schedules.linear(0, 100, start=0.2, end=1.0) == pytest.approx(0.2)
    assert schedules.linear(50, 100, start=0.2, end=1.0) == pytest.approx(0.6)
    assert schedules.linear(500, 100, start=0.2, end=1.0) == pytest.approx(1.0)


def test_wsd_warms_up_holds_and_decays():
    a = [schedules.wsd(s, 100, peak=0.9, warmup=0.1, decay=0.2) for s in range(101)]
    assert a[0] == 0 and a[5] == pytest.approx(0.45) and a[10] == pytest.approx(0.9)
    assert all(v == pytest.approx(0.9) for v in a[10:81])
    assert a[90] == pytest.approx(0.45) and a[100] == pytest.approx(0.0)
    assert schedules.alpha_at("wsd", 50, 100, peak=0.9) == pytest.approx(0.9)


def test_mix():
    lm, kd = torch.tensor(2.0), torch.tensor(4.0)
    assert schedules.mix(lm, kd, 0.25) == pytest.approx(0.75 * 2 + 0.25 * 4)
    assert schedules.mix(lm, kd, 0.0) == lm and schedules.mix(lm, kd, 1.0) == kd


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: schedules.constant(0, 10, alpha=1.5), "alpha"),
        (lambda: schedules.wsd(0, 10, warmup=0.7, decay=0.5), "warmup"),
        (lambda: schedules.linear(0, 0), "total_steps"),
        (lambda: schedules.alpha_at("cosine", 0, 10), "unknown alpha schedule"),
        (lambda: schedules.mix(1.0, 2.0, -0.1), "alpha"),
    ],
)
def test_bad_schedule_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
