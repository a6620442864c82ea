"""Resume of the prior trainers (fitkit.train.priors) through the run store's checks."""

from __future__ import annotations

import re

import pytest
import torch

from fitkit.train import priors as train
from fitkit.train.__main__ import main


class Killed(Exception):
    """Stands in for a killed process."""


def killed_gmm_run(tmp_path, monkeypatch, **settings):
    """A GMM fit killed after its first checkpoint; its output path."""
    out = tmp_path / "gmm.pkl"
    calls = {"n": 0}
    original = train.em_step

    def em_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(train, "em_step", em_step)
        with pytest.raises(Killed):
            train.train_gmm(out, checkpoint_every=1, **settings)
    return out


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path, monkeypatch, capsys):
    out = killed_gmm_run(tmp_path, monkeypatch, num_poses=500, steps=3, num_components=2)
    saved = torch.load(train.resume_path(out), weights_only=True)
    assert saved["settings"]["num_poses"] == 500 and saved["step"] == 1
    argv = ["gmm", "--out", str(out), "--steps", "3", "--num-components", "2", "--resume"]
    assert main([*argv, "--num-poses", "600"]) == 2
    assert re.search(r"gmm: error: .*gmm.pkl.resume.pt: resume with the run's own settings "
                     r"\(num_poses: checkpoint 500, given 600\)", capsys.readouterr().err)
    assert main([*argv, "--num-poses", "500"]) == 0
    assert out.is_file() and not train.resume_path(out).exists()
