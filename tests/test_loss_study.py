"""The loss study's measures (zoo/loss_study.py): the analyser's reading of 32x32 images, and the table."""

from __future__ import annotations

import torch

import zoo
import zoo.loss_study as study
from zoo.pipelines.base import to_pil


def test_the_analyser_reads_heldout_32px_images_and_not_noise():
    data = study.sample_quality(to_pil(study.heldout_images(24)))
    noise = study.sample_quality(to_pil(torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1))
    assert data["all"] >= 0.9 and data["template_iou"] > 0.9 and data["clean"] > 0.95
    assert noise["all"] <= 0.1 and noise["clean"] < 0.2


def test_measure_gives_every_column_of_the_table(monkeypatch):
    monkeypatch.setattr(study, "SETTINGS", (("ddpm", 2), ("ddim", 2)))
    torch.manual_seed(0)
    row = study.measure(zoo.build("ddpm-hybrid-32", tiny=True, device="cpu"), bound_images=2, samples=2)
    assert row["bits_per_dim"] > 0 and row["l_simple"] > 0 and row["variance"] == "learned"
    assert set(row["ddpm-2"]) == {"all", "template_iou", "clean"}
    text = study.table([row, study.data_row(4)])
    assert text.count("\n") == 3 and "ddpm-hybrid-32" in text and "dataset (held-out)" in text
