"""The energy gate silences a stem where it is far below the mixture, with fades."""

import torch

from sfsep.postprocess import energy_gate


def test_gate_removes_quiet_leakage_and_keeps_the_source():
    rate = 8000
    t = torch.arange(2 * rate) / rate
    source = torch.sin(2 * torch.pi * 300 * t) * (t < 1.0)  # present in the first second only
    leakage = 0.005 * torch.sin(2 * torch.pi * 700 * t)  # -46 dB relative to the mixture
    accompaniment = torch.sin(2 * torch.pi * 500 * t)
    mixture = (source + accompaniment)[None].repeat(2, 1)
    stem = (source + leakage)[None].repeat(2, 1)
    gated = energy_gate(stem, mixture, rate, threshold_db=-30)
    second_half = slice(int(1.1 * rate), None)
    assert gated[:, second_half].abs().max() == 0  # leakage silenced
    first_half = slice(0, int(0.9 * rate))
    torch.testing.assert_close(gated[:, first_half], stem[:, first_half])  # the source untouched
    # the transition is a ramp, not a step: some samples lie strictly between the two gains
    around = gated[0, int(0.98 * rate): int(1.08 * rate)] / stem[0, int(0.98 * rate): int(1.08 * rate)]
    assert ((around > 0.05) & (around < 0.95)).any()


def test_gate_keeps_everything_when_threshold_is_low_and_silent_mixture():
    stem = torch.randn(1, 4000) * 0.01
    mixture = torch.zeros(1, 4000)
    torch.testing.assert_close(energy_gate(stem, mixture, 8000, -30), stem)
    loud = torch.randn(1, 4000)
    torch.testing.assert_close(energy_gate(loud * 0.1, loud, 8000, -60), loud * 0.1)
