import pytest
import torch
import torch.fx as fx
from torch import nn

from fxmeta.errors import SpecError
from fxmeta.models import MODELS, get_model

torch.set_num_threads(1)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes_on_cifar_and_digits_inputs(name):
    model = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    gray = get_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_symbolic_trace_matches_eager(name):
    torch.manual_seed(0)
    model = get_model(name).eval()
    gm = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    # nothing is hidden in leaves: every conv of the model is a node of the graph
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(gm.get_submodule(t), nn.Conv2d) for t in targets) == convs


def test_parameter_counts():
    # Option-B shortcuts (1x1 conv + BN) in the two downsampling blocks.
    assert _params(get_model("resnet56")) == 855_770
    assert _params(get_model("resnet20")) == 272_474
    assert _params(get_model("resnet110")) == 1_730_714
    assert _params(get_model("vgg19")) == 20_035_018
    assert _params(get_model("resnet56", num_classes=100)) == 855_770 + 90 * 65


def test_resnet56_structure():
    model = get_model("resnet56")
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 27
    with_projection = [b for b in blocks if len(b.shortcut) == 2]
    assert len(with_projection) == 2


def test_vgg19_macs_match_depgraph_cifar_vgg():
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        get_model("vgg19").eval()(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() // 2 == 511_382_528


def test_unknown_model_lists_known_names():
    with pytest.raises(SpecError, match="resnet56"):
        get_model("resnet57")


def test_init_is_kaiming_and_seeded():
    torch.manual_seed(1)
    a = get_model("resnet20")
    torch.manual_seed(1)
    b = get_model("resnet20")
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    w = a.layer3[0].conv2.weight
    expected_std = (2.0 / (w.shape[0] * 9)) ** 0.5  # fan_out mode
    assert abs(w.std().item() - expected_std) / expected_std < 0.05
