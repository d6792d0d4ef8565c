import sys
import types

import pytest
import torch
from torch import nn

import hydranet as hn
from hydranet.models import HydraNet
from hydranet.models.backbones import BACKBONES, MLP, ConvNet, LeNet, build_backbone, from_timm, from_torchvision


pytestmark = pytest.mark.usefixtures("one_thread")


def test_mlp_layers_flatten_and_feature_size():
    mlp = MLP(12, hidden=(8, 5), norm="layer", activation="tanh", dropout=0.1)
    assert mlp.out_features == 5 and mlp.in_features == 12
    assert [type(m).__name__ for m in mlp[1]] == ["Linear", "LayerNorm", "Tanh", "Dropout"]
    x = torch.randn(4, 3, 4)  # flattened to 12 values
    assert mlp(x).shape == (4, 5)
    plain = MLP(3, hidden=(2,)).eval()
    layer = plain[1][0]
    assert torch.allclose(plain(x[:, 0, :3]), torch.relu(x[:, 0, :3] @ layer.weight.T + layer.bias))
    assert isinstance(MLP(3, hidden=(2,), norm="batch")[1][1], nn.BatchNorm1d)


def test_mlp_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        MLP(4, hidden=())
    with pytest.raises(ValueError, match="Unknown norm 'group'"):
        MLP(4, norm="group")
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        MLP(0)
    with pytest.raises(ValueError, match="Unknown activation"):
        MLP(4, activation="sigmoidal")


@pytest.mark.parametrize("size", [28, 32, 64])
def test_convnet_maps_small_images_to_vectors(size):
    net = ConvNet(3, widths=(4, 8, 16))
    assert net(torch.randn(2, 3, size, size)).shape == (2, 16) and net.out_features == 16


def test_convnet_stages_and_global_average_pooling():
    net = ConvNet(1, widths=(4, 6)).eval()
    assert [type(m).__name__ for m in net[0]] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert [type(m).__name__ for m in net[1]] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    x = torch.randn(2, 1, 16, 16)
    maps = net[1](net[0](x))
    assert torch.allclose(net(x), maps.mean(dim=(2, 3)), atol=1e-6)
    assert net[0][0].bias is None and ConvNet(1, widths=(4,), norm=None)[0][0].bias is not None


def test_convnet_pool_grid_keeps_the_left_and_right_halves_apart():
    net = ConvNet(1, widths=(4, 6), pool=(1, 2)).eval()
    assert net.out_features == 12
    x = torch.randn(3, 1, 16, 24)
    maps = net[1](net[0](x))  # [3, 6, 4, 6]
    left, right = maps[..., :3].mean(dim=(2, 3)), maps[..., 3:].mean(dim=(2, 3))
    expected = torch.stack([left, right], dim=2).flatten(1)  # channel-major, as nn.Flatten lays out [C, 1, 2]
    assert torch.allclose(net(x), expected, atol=1e-6)
    assert ConvNet(1, widths=(4,), pool=3).out_features == 36
    for bad in (0, (1,), (1, 2, 3), 1.5, "2"):
        with pytest.raises(ValueError, match=r"pool must be a positive int or \(rows, cols\)"):
            ConvNet(1, widths=(4,), pool=bad)


def test_convnet_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    net = ConvNet(3, widths=(4, 8)).eval()
    x = torch.randn(2, 3, 28, 28)
    expected = net(x)
    assert torch.allclose(net(x.to(memory_format=torch.channels_last)), expected, atol=1e-5)
    net.to(memory_format=torch.channels_last)
    assert torch.allclose(net(x.to(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_convnet_input_errors():
    with pytest.raises(ValueError, match=r"expects images \[batch, 1, height, width\].*x.unsqueeze\(1\)"):
        ConvNet()(torch.randn(2, 28, 28))
    with pytest.raises(ValueError, match="too small for 4 stages"):
        ConvNet(1, widths=(2, 2, 2, 2))(torch.randn(1, 1, 12, 12))
    with pytest.raises(ValueError, match="positive odd"):
        ConvNet(kernel_size=2)


def test_lenet_sizes():
    net = LeNet(1)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 84) and net.out_features == 84
    assert LeNet(3, activation="tanh", out_features=32)(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_build_backbone_fills_sizes_from_input_shape():
    mlp = build_backbone("mlp", input_shape=(1, 4, 5), hidden=(6,))
    assert isinstance(mlp, MLP) and mlp.in_features == 20
    conv = build_backbone("convnet", input_shape=(3, 32, 32), widths=(4,))
    assert conv.in_channels == 3
    assert build_backbone("lenet", input_shape=(1, 28, 28)).in_channels == 1
    assert build_backbone("mlp", in_features=7, input_shape=(3,)).in_features == 7  # explicit wins
    assert set(BACKBONES) >= {"mlp", "convnet", "lenet"}


def test_build_backbone_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"Unknown backbone 'convnt'. Did you mean 'convnet'\?.*'torchvision:<name>'"):
        build_backbone("convnt")
    with pytest.raises(ValueError, match="Unknown backbone family 'keras'"):
        build_backbone("keras:resnet")
    with pytest.raises(ValueError, match=r"Backbone 'mlp': .*width"):
        build_backbone("mlp", in_features=3, width=4)


def test_registering_a_backbone(monkeypatch):
    class Tiny(nn.Sequential):
        def __init__(self, in_features: int, width: int = 3):
            super().__init__(nn.Linear(in_features, width))
            self.out_features = width

    monkeypatch.setitem(BACKBONES, "tiny", Tiny)
    model = HydraNet(build_backbone("tiny", input_shape=(5,)), [hn.Task("y", "regression")])
    assert model(torch.randn(2, 5))["y"].shape == (2, 1)


def test_adapters_name_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"needs torchvision, which is not installed: pip install hydranet\[vision\]"):
        from_torchvision("resnet18")
    with pytest.raises(ImportError, match=r"needs timm, which is not installed: pip install hydranet\[timm\]"):
        build_backbone("timm:resnet18")


class FakeResNet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


class FakeConvNeXt(nn.Module):
    """Its classifier keeps a norm and a flatten before the last Linear, as torchvision's ConvNeXt."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 10, 3), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.LayerNorm(10), nn.Linear(10, 1000))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []

    def resnet_like(weights=None, **kwargs):
        calls.append((weights, kwargs))
        return FakeResNet(**kwargs)

    models = types.ModuleType("torchvision.models")
    models.resnet_like = resnet_like
    models.convnext_like = lambda weights=None: FakeConvNeXt()
    models.no_head = lambda weights=None: nn.Sequential(nn.Conv2d(3, 4, 3))
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


def test_from_torchvision_strips_the_classifier(fake_torchvision):
    model = from_torchvision("resnet_like", num_classes=7)
    assert fake_torchvision == [(None, {"num_classes": 7})]  # weights=None: nothing to download
    assert isinstance(model.fc, nn.Identity) and model.out_features == 12
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 12)
    convnext = build_backbone("torchvision:convnext_like")
    assert isinstance(convnext.classifier[2], nn.Identity) and isinstance(convnext.classifier[1], nn.LayerNorm)
    hydra = HydraNet(convnext, [hn.Task("c", "multiclass", num_classes=3)], input_shape=(3, 8, 8))
    assert hydra.feature_dim == 10 and hydra(torch.randn(2, 3, 8, 8))["c"].shape == (2, 3)


def test_from_torchvision_errors(fake_torchvision):
    with pytest.raises(ValueError, match="no model builder 'resnet_lik'. Did you mean 'resnet_like'"):
        from_torchvision("resnet_lik")
    with pytest.raises(ValueError, match="Cannot find the classifier"):
        from_torchvision("no_head")


def test_from_timm_builds_without_classifier(monkeypatch):
    seen = {}

    def create_model(name, pretrained=False, num_classes=1000, **kwargs):
        seen.update(name=name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        model = nn.Sequential(nn.Conv2d(kwargs.get("in_chans", 3), 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        model.num_features = 6
        return model

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = build_backbone("timm:tiny_net", input_shape=(1, 16, 16))
    assert seen == {"name": "tiny_net", "pretrained": False, "num_classes": 0, "in_chans": 1}
    assert model.out_features == 6 and model(torch.randn(2, 1, 16, 16)).shape == (2, 6)
    with pytest.raises(ValueError, match="num_classes=0"):
        from_timm("tiny_net", num_classes=10)
