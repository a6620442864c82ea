"""No file fitkit reads runs code, and a corrupt or wrong file gets a one-line error naming it.

Every loader of a pickled format (SMPL ``.pkl``, ``gmm_08.pkl``, VPoser snapshots, cNF weights,
network checkpoints) is handed a payload whose unpickling would create a sentinel file: the loader
must refuse it, name the file and the refused global, and the sentinel must never appear. The
official layouts (chumpy objects, scipy.sparse under old and new module paths, Lightning
snapshots, old pickle protocols) still load.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
import yaml

import fitkit
from fitkit.body import SMPL_PARENTS, BodyFileError, load_body
from fitkit.body.densepose_uv import read_uv_processed
from fitkit.io.npz import FileKeyError
from fitkit.io.safe_pickle import SparseMatrixState, UnsafePickleError, safe_load, safe_torch_load
from fitkit.nets import CheckpointError, load_flownet, load_network
from fitkit.priors import CNFPrior, GMMPrior, VPoserPrior, VPoserV2, load

NUM_VERTICES = 32


class Payload:
    """Unpickling this runs ``kind`` with the sentinel path: a file appears if code ran."""

    def __init__(self, sentinel: Path, kind: str = "open") -> None:
        self.sentinel = sentinel
        self.kind = kind

    def __reduce__(self):
        if self.kind == "os.system":
            return os.system, (f"touch '{self.sentinel}'",)
        if self.kind == "eval":
            return eval, (f"open({str(self.sentinel)!r}, 'w')",)
        if self.kind == "exec":
            return exec, (f"open({str(self.sentinel)!r}, 'w')",)
        return open, (str(self.sentinel), "w")


REFUSED = {"open": "io.open", "os.system": "system", "eval": "builtins.eval",
           "exec": "builtins.exec"}


def fake_class(monkeypatch, module_name: str, class_name: str, bases: tuple = ()) -> type:
    """A class registered under ``module_name`` (parents included), so pickle names it there."""
    cls = type(class_name, bases, {"__module__": module_name, "__qualname__": class_name})
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if not isinstance(sys.modules.get(name), types.ModuleType):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    setattr(sys.modules[module_name], class_name, cls)
    return cls


def assert_refused(error: pytest.ExceptionInfo, path: Path, sentinel: Path, name: str) -> None:
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert name in message and "\n" not in message, message
    assert not sentinel.exists(), "the payload ran"


def assert_one_line(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    for word in words:
        assert word in message, message


# --- the restricted unpickler ------------------------------------------------------------------

def test_the_payload_is_live_under_plain_pickle(tmp_path):
    sentinel = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(sentinel))).close()
    assert sentinel.exists()  # so the checks below would notice a loader that ran it


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_safe_load_refuses_code_and_runs_nothing(tmp_path, kind, protocol):
    sentinel, path = tmp_path / "ran", tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"x": np.zeros(3), "y": Payload(sentinel, kind)}, protocol))
    with pytest.raises(UnsafePickleError) as error:
        safe_load(path)
    assert_refused(error, path, sentinel, REFUSED[kind])
    assert isinstance(error.value, ValueError)


def test_reconstructor_is_limited_to_allowed_classes_built_from_object(tmp_path):
    path = tmp_path / "data.pkl"
    # copy_reg._reconstructor(set, set, None): a base other than object is refused.
    path.write_bytes(b"ccopy_reg\n_reconstructor\n(c__builtin__\nset\nc__builtin__\nset\nNtR.")
    with pytest.raises(UnsafePickleError, match=r"copyreg\._reconstructor\(builtins\.set\)"):
        safe_load(path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_data_round_trips_through_every_protocol(tmp_path, protocol):
    dense = np.arange(12.0).reshape(3, 4)
    dense[1] = 0.0
    data = {
        "float": dense, "uint": np.arange(5, dtype=np.uint32), "empty": np.zeros((0, 3)),
        "names": np.array(["nose", "leye"]), "scalar": np.float32(1.5), "ids": {1, 2},
        "frozen": frozenset({3}), "text": "lbs",
        "csc": scipy.sparse.csc_matrix(dense), "csr": scipy.sparse.csr_matrix(dense),
        "coo": scipy.sparse.coo_matrix(dense),
    }
    loaded = safe_load(io.BytesIO(pickle.dumps(data, protocol)))
    for key in ("float", "uint", "empty", "names"):
        np.testing.assert_array_equal(loaded[key], data[key])
        assert loaded[key].dtype == data[key].dtype
    assert loaded["scalar"] == np.float32(1.5) and loaded["ids"] == {1, 2}
    assert loaded["frozen"] == frozenset({3}) and loaded["text"] == "lbs"
    for key in ("csc", "csr", "coo"):
        assert isinstance(loaded[key], SparseMatrixState)
        np.testing.assert_array_equal(loaded[key].toarray(), dense)


def test_sparse_matrix_under_the_old_scipy_module_path_loads(tmp_path):
    dense = np.eye(3)
    dense[0, 2] = 0.5
    blob = pickle.dumps(scipy.sparse.csc_matrix(dense), protocol=2)
    old = blob.replace(b"scipy.sparse._csc", b"scipy.sparse.csc")  # scipy < 1.8, official SMPL
    assert old != blob
    np.testing.assert_array_equal(safe_load(io.BytesIO(old)).toarray(), dense)


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps(np.ones(50))[:-30]],
                         ids=["empty", "text", "truncated"])
def test_unreadable_pickles_name_the_file(tmp_path, content):
    path = tmp_path / "data.pkl"
    path.write_bytes(content)
    with pytest.raises(FileKeyError) as error:
        safe_load(path)
    assert not isinstance(error.value, UnsafePickleError)
    assert_one_line(error, path, "not a readable pickle")
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        safe_load(tmp_path / "missing.pkl")


# --- SMPL body models --------------------------------------------------------------------------

def smpl_arrays(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    v = NUM_VERTICES
    j_regressor = np.zeros((24, v))
    for joint in range(24):
        j_regressor[joint, rng.choice(v, size=3, replace=False)] = 1.0 / 3.0
    weights = rng.random((v, 24)) ** 4
    return {
        "v_template": rng.normal(scale=0.3, size=(v, 3)),
        "f": rng.integers(0, v, size=(2 * v, 3)).astype(np.uint32),
        "shapedirs": rng.normal(scale=0.02, size=(v, 3, 10)),
        "posedirs": rng.normal(scale=0.01, size=(v, 3, 207)),
        "J_regressor": j_regressor,
        "weights": weights / weights.sum(axis=1, keepdims=True),
        "kintree_table": np.stack([np.array(SMPL_PARENTS), np.arange(24)]),
    }


def fake_chumpy(monkeypatch) -> type:
    """chumpy's ``Ch`` under its module name (pickled like chumpy: its ``__dict__``)."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = set()

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch, chumpy.ch = Ch, ch
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch)
    return Ch


def write_official_smpl(path: Path, arrays: dict, monkeypatch, protocol: int = 2,
                        old_scipy: bool = False, **extra) -> None:
    """An official-style SMPL pickle: chumpy arrays, sparse J_regressor."""
    ch = fake_chumpy(monkeypatch)
    content = {key: ch(value) for key, value in arrays.items()
               if key in ("v_template", "shapedirs", "posedirs", "weights")}
    content.update(f=arrays["f"], kintree_table=arrays["kintree_table"], bs_style="lbs",
                   J_regressor=scipy.sparse.csc_matrix(arrays["J_regressor"]), **extra)
    blob = pickle.dumps(content, protocol)
    if old_scipy:
        blob = blob.replace(b"scipy.sparse._csc", b"scipy.sparse.csc")
    path.write_bytes(blob)
    monkeypatch.setitem(sys.modules, "chumpy", None)  # importing chumpy now fails
    monkeypatch.setitem(sys.modules, "chumpy.ch", None)


@pytest.mark.parametrize(("protocol", "old_scipy"), [(0, True), (2, True), (4, False)])
def test_official_smpl_layouts_load(tmp_path, monkeypatch, protocol, old_scipy):
    arrays = smpl_arrays()
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_official_smpl(path, arrays, monkeypatch, protocol, old_scipy)
    body = load_body(path, dtype=torch.float64)
    np.testing.assert_array_equal(body.smpl.J_regressor.numpy(), arrays["J_regressor"])
    np.testing.assert_array_equal(body.smpl.v_template.numpy(), arrays["v_template"])
    assert body.num_vertices == NUM_VERTICES


@pytest.mark.parametrize("kind", ["os.system", "open"])
def test_smpl_pickle_payload_is_refused(tmp_path, monkeypatch, kind):
    sentinel = tmp_path / "ran"
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"
    write_official_smpl(path, smpl_arrays(), monkeypatch, bs_type=Payload(sentinel, kind))
    with pytest.raises(UnsafePickleError) as error:
        fitkit.load_body(folder)  # through the folder search, as users pass it
    assert_refused(error, path, sentinel, REFUSED[kind])


def test_smpl_npz_with_pickled_objects_is_refused(tmp_path):
    sentinel = tmp_path / "ran"
    arrays = smpl_arrays()
    arrays["extra"] = np.array([Payload(sentinel)], dtype=object)
    np.savez(tmp_path / "body.npz", **arrays)
    with pytest.raises(BodyFileError) as error:
        load_body(tmp_path / "body.npz")
    assert_one_line(error, tmp_path / "body.npz", "key 'extra'")
    assert not sentinel.exists()


def corrupt_smpl(case: str, tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / f"{case}.pkl"
    arrays = smpl_arrays()
    if case == "truncated":
        write_official_smpl(path, arrays, monkeypatch)
        path.write_bytes(path.read_bytes()[:5000])
    elif case == "not_a_dict":
        path.write_bytes(pickle.dumps([arrays["v_template"]], protocol=2))
    elif case == "missing_weights":
        del arrays["weights"]
        path.write_bytes(pickle.dumps(arrays, protocol=2))
    elif case == "sparse_out_of_range":
        bad = scipy.sparse.csc_matrix(arrays["J_regressor"])
        bad.indices[0] = 10_000  # a row far outside the (24, V) matrix
        arrays["J_regressor"] = bad
        path.write_bytes(pickle.dumps(arrays, protocol=2))
    return path


@pytest.mark.parametrize(("case", "words"), [
    ("truncated", ["not a readable pickle"]),
    ("not_a_dict", ["expected a pickled dict"]),
    ("missing_weights", ["key 'weights': missing"]),
    ("sparse_out_of_range", ["key 'J_regressor'", "cannot convert"]),
])
def test_corrupt_smpl_pickles_get_one_line_errors(tmp_path, monkeypatch, case, words):
    path = corrupt_smpl(case, tmp_path, monkeypatch)
    with pytest.raises(BodyFileError) as error:
        load_body(path)
    assert_one_line(error, path, *words)


# --- GMM ---------------------------------------------------------------------------------------

def gmm_arrays(k: int = 2, d: int = 69) -> dict:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(k, d, d)) * 0.1
    return {"means": rng.normal(size=(k, d)) * 0.3, "covars": a @ a.transpose(0, 2, 1) + np.eye(d),
            "weights": np.full(k, 1.0 / k)}


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_gmm_official_layout_loads_under_old_protocols(tmp_path, protocol):
    arrays = gmm_arrays()
    path = tmp_path / "gmm_08.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol))
    prior = GMMPrior.from_pickle(path)
    np.testing.assert_allclose(prior.means.numpy(), arrays["means"], rtol=1e-6)
    assert prior.num_components == 2


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_gmm_payload_is_refused(tmp_path, kind):
    sentinel, path = tmp_path / "ran", tmp_path / "gmm_08.pkl"
    path.write_bytes(pickle.dumps({**gmm_arrays(), "notes": Payload(sentinel, kind)}, protocol=2))
    with pytest.raises(UnsafePickleError) as error:
        load(path)
    assert_refused(error, path, sentinel, REFUSED[kind])


@pytest.mark.parametrize(("case", "words"), [
    ("text", ["not a readable pickle"]),
    ("truncated", ["not a readable pickle"]),
    ("list", ["expected a pickled dict"]),
    ("no_covars", ["key 'covars': missing"]),
    ("means_63", ["key 'means': expected shape (2, 69)"]),
    ("nan_means", ["key 'means': contains NaN"]),
    ("negative_weights", ["key 'weights': must be non-negative"]),
    ("singular_covars", ["key 'covars': not positive definite"]),
    ("string_weights", ["key 'weights': not an array of numbers"]),
])
def test_corrupt_gmm_files_get_one_line_errors(tmp_path, case, words):
    arrays = gmm_arrays()
    content: object = arrays
    if case == "list":
        content = list(arrays.values())
    elif case == "no_covars":
        del arrays["covars"]
    elif case == "means_63":
        arrays["means"] = arrays["means"][:, :63]
    elif case == "nan_means":
        arrays["means"][0, 0] = np.nan
    elif case == "negative_weights":
        arrays["weights"] = np.array([1.5, -0.5])
    elif case == "singular_covars":
        arrays["covars"][1] = 0.0
    elif case == "string_weights":
        arrays["weights"] = np.array(["a", "b"])
    path = tmp_path / "gmm_08.pkl"
    blob = pickle.dumps(content, protocol=2)
    path.write_bytes({"text": b"means: 1\n", "truncated": blob[: len(blob) // 2]}.get(case, blob))
    with pytest.raises(FileKeyError) as error:
        load(path)
    assert_one_line(error, path, *words)


# --- VPoser ------------------------------------------------------------------------------------

def write_vposer_folder(folder: Path, extra: dict | None = None, latent: int = 32) -> Path:
    """A v2 experiment folder with a VPoser of ``latent`` size; returns the snapshot path."""
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    config = {"general": {"expr_id": "V02_05"}, "model_params": {"num_neurons": 512,
                                                                  "latentD": latent}}
    (folder / "V02_05.yaml").write_text(yaml.safe_dump(config))
    state = {f"vp_model.{k}": v for k, v in VPoserV2(latent_dim=latent).state_dict().items()}
    path = folder / "snapshots" / "V02_05_epoch=08_val_loss=0.03.ckpt"
    torch.save({"epoch": 8, "global_step": 800, "state_dict": state, **(extra or {})}, path)
    return path


def lightning_extras(monkeypatch) -> dict:
    """What a PyTorch-Lightning 1.x trainer adds to a snapshot (human_body_prior trained V02_05
    with Lightning 1.x): callback states keyed by the callback class, optimizer and scheduler
    states, hyperparameters in an ``AttributeDict``, the version."""
    checkpoint = fake_class(monkeypatch, "pytorch_lightning.callbacks.model_checkpoint",
                            "ModelCheckpoint")
    early_stopping = fake_class(monkeypatch, "pytorch_lightning.callbacks.early_stopping",
                                "EarlyStopping")
    attribute_dict = fake_class(monkeypatch, "pytorch_lightning.utilities.parsing",
                                "AttributeDict", (dict,))
    model = VPoserV2()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # Adam's state: step counts and moments
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=5)
    scheduler.step(0.5)
    return {
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {
            checkpoint: {"monitor": "val_loss", "best_model_score":
                                         torch.tensor(0.03), "best_model_path": "/x/V02_05.ckpt"},
            early_stopping: {"wait_count": 0, "stopped_epoch": 0,
                                       "best_score": torch.tensor(0.03), "patience": 10},
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": attribute_dict(latentD=32, lr=1e-3),
    }


def test_vposer_lightning_snapshot_loads_tensors_only(tmp_path, monkeypatch):
    extras = lightning_extras(monkeypatch)
    write_vposer_folder(tmp_path, extras)
    for name in [n for n in sys.modules if n.startswith("pytorch_lightning")]:
        monkeypatch.setitem(sys.modules, name, None)  # Lightning is not importable when loading
    assert isinstance(load(tmp_path), VPoserPrior)


@pytest.mark.parametrize("kind", ["os.system", "open"])
def test_vposer_snapshot_payload_is_refused(tmp_path, kind):
    sentinel = tmp_path / "ran"
    path = write_vposer_folder(tmp_path / "vposer", {"callbacks": Payload(sentinel, kind)})
    with pytest.raises(UnsafePickleError) as error:
        load(tmp_path / "vposer")
    assert_refused(error, path, sentinel, REFUSED[kind])


def test_vposer_snapshot_with_other_classes_is_refused_by_name(tmp_path, monkeypatch):
    config_class = fake_class(monkeypatch, "omegaconf.dictconfig", "DictConfig", (dict,))
    path = write_vposer_folder(tmp_path, {"hyper_parameters": config_class(latentD=32)})
    with pytest.raises(UnsafePickleError) as error:
        load(tmp_path)
    assert_one_line(error, path, "omegaconf.dictconfig.DictConfig")


@pytest.mark.parametrize(("case", "file", "words"), [
    ("truncated", "ckpt", ["not a readable tensors-only torch checkpoint"]),
    ("no_state_dict", "ckpt", ["key 'state_dict': missing"]),
    ("bad_yaml", "yaml", ["not a readable yaml"]),
    ("latent_text", "yaml", ["key 'model_params.latentD'", "positive integer"]),
    ("latent_16", "ckpt", ["key 'state_dict'", "does not fit"]),
])
def test_corrupt_vposer_folders_get_one_line_errors(tmp_path, case, file, words):
    ckpt = write_vposer_folder(tmp_path)
    config = tmp_path / "V02_05.yaml"
    if case == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:4096])
    elif case == "no_state_dict":
        torch.save({"epoch": 8}, ckpt)
    elif case == "bad_yaml":
        config.write_text("model_params: [unclosed\n")
    elif case == "latent_text":
        config.write_text(yaml.safe_dump({"model_params": {"latentD": "thirty-two"}}))
    elif case == "latent_16":
        config.write_text(yaml.safe_dump({"model_params": {"latentD": 16}}))
    with pytest.raises(FileKeyError) as error:
        load(tmp_path)
    assert_one_line(error, ckpt if file == "ckpt" else config, *words)


def test_vposer_folder_without_snapshots_names_the_folder(tmp_path):
    write_vposer_folder(tmp_path).unlink()
    with pytest.raises(FileNotFoundError, match="snapshots: no"):
        load(tmp_path)


# --- cNF ---------------------------------------------------------------------------------------

def write_cnf_folder(folder: Path) -> None:
    CNFPrior(num_layers=1, hidden=8).save_folder(folder)


@pytest.mark.parametrize("kind", ["os.system", "exec"])
def test_cnf_weights_payload_is_refused(tmp_path, kind):
    sentinel = tmp_path / "ran"
    write_cnf_folder(tmp_path / "cnf")
    path = tmp_path / "cnf" / "weights.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "evil": Payload(sentinel, kind)}, path)
    with pytest.raises(UnsafePickleError) as error:
        load(tmp_path / "cnf")
    assert_refused(error, path, sentinel, REFUSED[kind])


@pytest.mark.parametrize(("case", "file", "words"), [
    ("bad_json", "config.json", ["not valid JSON"]),
    ("no_hidden", "config.json", ["key 'hidden'", "integer"]),
    ("text_layers", "config.json", ["key 'num_layers'", "integer"]),
    ("nan_offset", "config.json", ["key 'energy_offset'", "finite"]),
    ("truncated", "weights.pt", ["not a readable tensors-only torch checkpoint"]),
    ("wider", "weights.pt", ["does not fit config.json"]),
    ("list", "weights.pt", ["expected a state_dict"]),
])
def test_corrupt_cnf_folders_get_one_line_errors(tmp_path, case, file, words):
    write_cnf_folder(tmp_path)
    config_path, weights = tmp_path / "config.json", tmp_path / "weights.pt"
    config = json.loads(config_path.read_text())
    if case == "bad_json":
        config_path.write_text("{'format': ")
    elif case == "no_hidden":
        del config["hidden"]
    elif case == "text_layers":
        config["num_layers"] = "four"
    elif case == "nan_offset":
        config["energy_offset"] = float("nan")
    elif case == "truncated":
        weights.write_bytes(weights.read_bytes()[:2048])
    elif case == "wider":
        torch.save(CNFPrior(num_layers=1, hidden=16).state_dict(), weights)
    elif case == "list":
        torch.save([torch.zeros(2)], weights)
    if case in ("no_hidden", "text_layers", "nan_offset"):
        config_path.write_text(json.dumps(config))
    with pytest.raises(FileKeyError) as error:
        load(tmp_path)
    assert_one_line(error, tmp_path / file, *words)


# --- network checkpoints and other tensors-only files ------------------------------------------

@pytest.mark.parametrize("loader", [load_flownet, load_network])
def test_network_checkpoint_payload_is_refused(tmp_path, loader):
    sentinel, path = tmp_path / "ran", tmp_path / "flow.pt"
    torch.save({"format": "fitkit-network", "model": Payload(sentinel, "os.system")}, path)
    with pytest.raises(CheckpointError, match="flow.pt"):
        loader(path)
    assert not sentinel.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_legacy_torch_files_and_plain_pickles_are_refused(tmp_path):
    sentinel = tmp_path / "ran"
    legacy, plain, framed = tmp_path / "legacy.pt", tmp_path / "plain.pt", tmp_path / "framed.pt"
    torch.save({"w": torch.zeros(2), "x": Payload(sentinel)}, legacy,
               _use_new_zipfile_serialization=False)
    plain.write_bytes(pickle.dumps(Payload(sentinel, "os.system"), protocol=2))
    framed.write_bytes(pickle.dumps(Payload(sentinel, "os.system"), protocol=4))
    for path, name in ((legacy, "io.open"), (plain, "system")):
        with pytest.raises(UnsafePickleError) as error:
            safe_torch_load(path)
        assert_refused(error, path, sentinel, name)
    with pytest.raises(FileKeyError) as error:
        safe_torch_load(framed)
    assert_one_line(error, framed, "not a readable tensors-only torch checkpoint", "operand")
    assert not sentinel.exists()


# --- DensePose's UV_Processed.mat --------------------------------------------------------------

def test_uv_processed_that_is_not_matlab_v5_gets_one_line_errors(tmp_path):
    hdf5 = tmp_path / "v73.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    hdf5.write_bytes(header + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 512)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"\x89HDF\r\n" * 40)
    cells = tmp_path / "cells.mat"
    scipy.io.savemat(cells, {"All_vertices": np.array([[1, "a"]], dtype=object),
                             "All_U_norm": np.zeros((1, 1)), "All_V_norm": np.zeros((1, 1)),
                             "All_Faces": np.ones((1, 3)), "All_FaceIndices": np.ones((1, 1))})
    for path, words in ((hdf5, ["v7.3"]), (garbage, ["cannot read as a MATLAB file"]),
                        (cells, ["key 'All_vertices'", "expected numbers"])):
        with pytest.raises(BodyFileError) as error:
            read_uv_processed(path)
        assert_one_line(error, path, *words)
    with pytest.raises(FileNotFoundError, match="nowhere.mat"):
        read_uv_processed(tmp_path / "nowhere.mat")
