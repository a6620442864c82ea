"""Behaviour of fitkit.nets.checkpoint: one checkpoint format for every registered network kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import fitkit.nets
from fitkit.nets import (
    NETWORK_KINDS,
    CheckpointError,
    FlowNet,
    FlowNetConfig,
    load_flownet,
    load_network,
    read_checkpoint,
    register_network,
    save_flownet,
    save_network,
)

SMALL = FlowNetConfig(image_size=32, width=8, stacks=1, depth=2, encoder_blocks=1,
                      displacement_scale=2.0)
SHIPPED = Path(fitkit.nets.__file__).parent / "data"


@dataclass(frozen=True)
class LineConfig:
    features: int = 3


class Line(nn.Module):
    """A network kind of a user's own."""

    def __init__(self, config: LineConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.features, 1)


@pytest.fixture
def line_kind():
    register_network("line", Line, LineConfig)
    yield "line"
    NETWORK_KINDS.pop("line")


def trained_flownet() -> FlowNet:
    """A small network with non-zero heads and BatchNorm statistics, in eval mode."""
    net = FlowNet(SMALL)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        net(torch.rand(2, 3, 32, 32, generator=generator),
            torch.randn(2, SMALL.render_channels, 32, 32, generator=generator))
    return net.eval()


def test_save_and_load_network_round_trip_the_flow_net_bit_exactly(tmp_path):
    net = trained_flownet()
    path = save_network(tmp_path / "sub" / "net.pt", net, training={"step": 3})
    state = read_checkpoint(path)
    assert (state["format"], state["version"], state["kind"]) == ("fitkit.network", 1, "flownet")
    assert state["training"] == {"step": 3}
    loaded = load_network(path)
    assert type(loaded) is FlowNet and loaded.config == SMALL and not loaded.training
    for (name, saved), restored in zip(net.state_dict().items(), loaded.state_dict().values(),
                                       strict=True):
        assert torch.equal(saved, restored), name
    image, renders = torch.rand(1, 3, 32, 32), torch.randn(1, SMALL.render_channels, 32, 32)
    assert torch.equal(loaded(image, renders), net(image, renders))
    assert load_flownet(save_flownet(tmp_path / "thin.pt", net)).config == SMALL
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["net.pt"]


@pytest.mark.parametrize("name", ["flownet_open.pt", "flownet_open_notexture.pt"])
def test_the_shipped_networks_in_the_first_layout_still_load(name):
    path = SHIPPED / name
    assert torch.load(path, weights_only=True)["format"] == "fitkit.flownet"  # not rewritten
    state = read_checkpoint(path, "flownet")
    assert state["kind"] == "flownet" and "training" not in state
    net = load_network(path)
    assert type(net) is FlowNet and net.config.image_size == 128
    assert net.config.texture == (name == "flownet_open.pt")
    assert load_flownet(path).config == net.config


def test_a_user_registered_kind_round_trips_and_is_kept_apart(tmp_path, line_kind):
    net = Line(LineConfig(features=5))
    path = save_network(tmp_path / "line.pt", net)
    loaded = load_network(path, line_kind)
    assert loaded.config == LineConfig(features=5)
    assert torch.equal(loaded.linear.weight, net.linear.weight)
    with pytest.raises(CheckpointError, match="line.pt: field 'kind': a 'line' checkpoint"):
        load_flownet(path)
    with pytest.raises(ValueError, match="not a 'line' network"):
        save_network(tmp_path / "wrong.pt", FlowNet(SMALL), line_kind)
    with pytest.raises(ValueError, match="already registered"):
        register_network(line_kind, FlowNet, FlowNetConfig)


def test_unregistered_kinds_and_foreign_files_raise_checkpoint_errors(tmp_path):
    good = torch.load(save_network(tmp_path / "good.pt", FlowNet(SMALL)), weights_only=True)
    cases = {
        "mystery.pt": ({**good, "kind": "mystery"},
                       "field 'kind': unknown network kind 'mystery'"),
        "other.pt": ({"weights": torch.zeros(3)}, "not a fitkit network checkpoint"),
        "version.pt": ({**good, "version": 2}, "unsupported checkpoint version 2"),
        "extra.pt": ({**good, "optimizer": {}}, r"unknown fields \['optimizer'\]"),
        "config.pt": ({**good, "config": {**good["config"], "colour": 1}},
                      "field 'config': unknown fields"),
        "weights.pt": ({**good, "config": {**good["config"], "width": 16}},
                       "field 'model' does not fit"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: .*{message}"):
            load_network(tmp_path / name)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not a registered network kind"):
        save_network(tmp_path / "plain.pt", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown network kind 'hmr'"):
        load_network(tmp_path / "good.pt", "hmr")
