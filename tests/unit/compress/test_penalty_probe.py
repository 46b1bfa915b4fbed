"""PenaltyProbe: the share of channels a penalty dominates, and the s that matches a share."""

from __future__ import annotations

import pytest
import torch

from trainer.compress.penalty_probe import PenaltyProbe


def test_report_counts_dominated_channels_and_suggests_s():
    probe = PenaltyProbe(steps=2)
    grads = torch.arange(1, 101, dtype=torch.float64) * 1e-6  # channel i: |grad| = i * 1e-6
    probe.add(grads)
    assert not probe.done
    probe.add(-grads)  # the sign does not matter: mean |grad|
    assert probe.done
    report = probe.report(c=50.5e-6, images_per_step=8, share=0.7)
    assert report["dominated_share"] == pytest.approx(0.5)  # channels 1..50 are below c
    assert report["channels"] == 100 and report["steps"] == 2
    # the 70th percentile of 1..100 (linear) is 70.3: s = 70.3e-6 / 8
    assert report["suggested_s"] == pytest.approx(70.3e-6 / 8)
    assert report["grad_abs_quantiles"]["0.5"] == pytest.approx(50.5e-6)


def test_probe_needs_gradients_and_a_step():
    with pytest.raises(ValueError):
        PenaltyProbe(steps=0)
    with pytest.raises(RuntimeError):
        PenaltyProbe().report(1.0, 8)
