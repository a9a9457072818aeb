"""The loss study's measures (zoo/loss_study.py): the analyser's reading of 32x32 images, the table from one
command, its Markdown, resuming an interrupted study, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
import zoo.loss_study as study
from zoo.pipelines.base import to_pil

SMALL = ["--bound-images", "2", "--samples", "2", "--steps", "2", "1", "--ddim-steps", "1"]


def test_the_analyser_reads_heldout_32px_images_and_not_noise():
    data = study.sample_quality(to_pil(study.heldout_images(24)))
    noise = study.sample_quality(to_pil(torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1))
    assert data["all"] >= 0.9 and data["template_iou"] > 0.9 and data["clean"] > 0.95
    assert noise["all"] <= 0.1 and noise["clean"] < 0.2


def test_at_32px_the_analyser_reads_the_true_attributes():
    """The check of the analyser at the study's size: zoo.evaluate's strict reading against what was drawn."""
    truth = study.data_row(24, ["ddpm-2"])["true"]
    assert truth["all"] >= 0.9 and truth["count"] == 24 and truth["template_iou"] > 0.9


def test_a_sample_is_held_to_a_whole_scene():
    blank = torch.zeros(3, 32, 32)  # one colour: nothing stands out
    assert study.own_scene(to_pil(blank[None])[0]) is None
    assert study.sample_quality(to_pil(blank[None])) == {"all": 0.0, "template_iou": 0.0, "clean": 0.0}


@pytest.fixture
def tiny_builds(monkeypatch):
    """zoo.build with tiny parts (random weights), so the command runs in seconds."""
    real = zoo.build
    monkeypatch.setattr(zoo, "build", lambda name, **kw: real(name, tiny=True, device="cpu"))


def test_one_command_gives_the_table_and_its_markdown(tiny_builds, tmp_path):
    text = study.main([*SMALL, "--names", "ddpm-hybrid-32", "ddpm-simple-32", "--markdown", str(tmp_path / "t.md")])
    assert (tmp_path / "t.md").read_text() == text
    head, rule, *rows = text.split("\n\n")[0].splitlines()
    assert "DDPM 2: all / IoU / clean" in head and "DDPM 1" in head and "DDIM 1" in head
    labels = ["`ddpm-hybrid-32` (hybrid, learned)", "`ddpm-simple-32` (simple, fixed_small)", "dataset (held-out)"]
    assert [r.split(" | ")[0] for r in rows] == [f"| {label}" for label in labels]
    assert "2 samples per setting" in text and "against their true attributes" in text and "clipped" in text


def test_an_interrupted_study_resumes_and_another_studys_file_is_kept(tiny_builds, tmp_path, monkeypatch):
    out = tmp_path / "rows.json"
    measured = []
    real = study.measure

    def stop_after_one(pipe, **kw):
        if measured:
            raise KeyboardInterrupt  # the second pipeline is interrupted
        measured.append(pipe.recipe.name)
        return real(pipe, **kw)

    monkeypatch.setattr(study, "measure", stop_after_one)
    names = ["--names", "ddpm-vlb-32", "ddpm-simple-32"]
    with pytest.raises(KeyboardInterrupt):
        study.main([*SMALL, *names, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert list(saved["rows"]) == ["ddpm-vlb-32"] and not out.with_name("rows.json.partial").exists()
    monkeypatch.setattr(study, "measure", lambda pipe, **kw: measured.append(pipe.recipe.name) or real(pipe, **kw))
    text = study.main([*SMALL, *names, "--out", str(out)])
    assert measured == ["ddpm-vlb-32", "ddpm-simple-32"]  # the finished row was reused, not measured again
    assert list(json.loads(out.read_text())["rows"]) == ["ddpm-vlb-32", "ddpm-simple-32"] and "ddpm-vlb-32" in text
    before = out.read_text()
    with pytest.raises(SystemExit, match="holds a study with other options"):
        study.main([*SMALL[:-1], "2", *names, "--out", str(out)])
    assert out.read_text() == before  # nothing lost


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--names", "ldm-clip-kl"], "latent pipeline; the study measures pixel pipelines"),
        (["--samples", "1"], "--samples must be at least 2"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_study_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        study.main(argv)
    assert message in capsys.readouterr().err
