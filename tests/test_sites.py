"""Recording sites: a site must run exactly once per forward pass and output a tensor."""

import pytest
import torch
from torch import nn

from pipeline.architectures import MLP
from pipeline.errors import SiteError
from pipeline.hooks import record, resolve_sites


class Shared(nn.Module):
    """One layer applied ``repeats`` times (weight sharing, as in ALBERT), then a readout."""

    def __init__(self, repeats: int):
        super().__init__()
        self.repeats = repeats
        self.layer = nn.Linear(4, 4)
        self.stack = nn.ModuleList([nn.Linear(4, 4), nn.Tanh()])
        self.readout = nn.Linear(4, 2)

    def forward(self, x):
        for _ in range(self.repeats):
            x = self.layer(x)
        for module in self.stack:
            x = module(x)
        return self.readout(x)


class Dictionary(nn.Module):
    """Outputs a dict: which of its tensors to record is not known."""

    def forward(self, x):
        return {"x": x}


def test_sites_that_run_once_are_recorded():
    model, x = Shared(repeats=1), torch.randn(3, 4)
    with record(model, ["layer", "stack.1", "readout"]) as captured:
        out = model(x)
    torch.testing.assert_close(captured["layer"], model.layer(x))
    torch.testing.assert_close(captured["stack.1"], torch.tanh(model.stack[0](model.layer(x))))
    torch.testing.assert_close(captured["readout"], out)


@pytest.mark.parametrize("repeats", [2, 5])
def test_a_shared_module_is_rejected_with_its_call_count(repeats):
    model = Shared(repeats)
    with pytest.raises(SiteError, match=rf"^site 'layer' runs {repeats} times per forward pass of 'net' "
                                        r"\(shared weights\); record a module that runs once$"):
        with record(model, ["readout", "layer"], "'net'"):
            model(torch.randn(3, 4))


def test_a_container_that_never_runs_suggests_its_children():
    model = Shared(repeats=1)
    with pytest.raises(SiteError) as info:
        with record(model, ["stack", "readout"], "'net'"):
            model(torch.randn(3, 4))
    message = str(info.value)
    assert "\n" not in message
    assert "'stack' (record its children instead, e.g. 'stack.*')" in message
    assert "'readout'" not in message


def test_an_output_without_a_tensor_names_the_site():
    model = nn.Sequential(nn.Linear(4, 4), Dictionary())
    with pytest.raises(SiteError, match=r"^site '1' of 'net': module output is a dict \(keys 'x'\), and which of its "
                                        r"entries to record is not known; record a submodule that outputs a tensor$"):
        with record(model, ["1"], "'net'"):
            model(torch.randn(3, 4))
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity())
    model[1].forward = lambda x: "text"
    with pytest.raises(SiteError, match=r"^site '1' of 'net': module output of type str holds no tensor to record"):
        with record(model, ["1"], "'net'"):
            model(torch.randn(3, 4))


def test_unknown_site_suggests_close_names_and_caps_the_list():
    model = MLP(hidden=[4] * 20)  # 62 module names
    with pytest.raises(SiteError) as info:
        resolve_sites(model, ["hidden.*.act", "hiden.3.act"], "'net'")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("site 'hiden.3.act' matches no module of 'net'; did you mean hidden.3.act, ")
    listed = message.split("valid names: ")[1]
    assert listed.startswith("hidden, hidden.0, hidden.0.linear, hidden.0.act, hidden.1, ")
    assert listed.endswith(", hidden.9.linear, ... and 32 more (see model.named_modules())")
    assert listed.count(", ") == 30
