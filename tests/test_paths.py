"""No name in a data file reaches outside its folder: image names must be plain file stems, and
nothing is read or written outside the dataset and output folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fitkit.io import read_params, write_params
from fitkit.io.dataset import DatasetError, open_dataset
from fitkit.refine import main as refine_main
from fitkit.synth import SynthConfig, generate_dataset

FAST = ["--iterations", "1", "--overlays", "4", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paths") / "data"
    return generate_dataset(root, 2, seed=4, config=SynthConfig(size=96), progress=False)


@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "sub/victim", "..", ".hidden",
                                  "", "a\\b", "na\x00me"])
def test_a_name_that_is_not_a_plain_stem_is_refused_naming_its_row(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    init = read_params(data / "init.npz")
    init["image_names"] = np.array(["000000", name])
    write_params(data / "init.npz", init)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    out = tmp_path / "work" / "out"
    assert refine_main(["--input", str(data), "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "init.npz" in err and "image_names" in err and "row 1" in err, err
    assert "Traceback" not in err
    assert victim.read_bytes() == b"keep me"
    assert not out.exists() or not any(out.rglob("*.png"))
    with pytest.raises(DatasetError, match="row 1"):
        open_dataset(data)


def test_outputs_stay_in_the_output_folder(dataset: Path, tmp_path: Path) -> None:
    before = {p for p in tmp_path.parent.rglob("*")}
    out = tmp_path / "out"
    assert refine_main(["--input", str(dataset), "--output", str(out), *FAST]) == 0
    written = {p for p in tmp_path.parent.rglob("*")} - before
    assert written and all(out in p.parents or p == out for p in written), sorted(written)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000.png", "000001.png"]
