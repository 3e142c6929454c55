"""Backbones: the packaged EfficientNet-Lite0 ImageNet weights are right; the Barlow Twins
ResNet-50 loader accepts the official file layout and rejects others."""

import numpy as np
import pytest
import torch
import torchvision
from skimage import data, transform

from bta_core import backbones
from bta_core.backbones import BackboneWeightsError, build_backbone, efficientnet_lite0


def _imagenet_input(img):
    x = transform.resize(img, (224, 224), anti_aliasing=True).astype(np.float32)
    x = (x - np.array(backbones.IMAGENET_MEAN)) / np.array(backbones.IMAGENET_STD)
    return torch.from_numpy(x.transpose(2, 0, 1)).float()[None]


def test_efficientnet_lite0_imagenet_classes():
    bb = efficientnet_lite0(classifier=True)
    model = bb.module.eval()
    with torch.no_grad():
        coffee = int(model(_imagenet_input(data.coffee())).argmax())
        cat = int(model(_imagenet_input(data.chelsea())).argmax())
    assert coffee == 967  # espresso
    assert 281 <= cat <= 285  # a cat class


def test_efficientnet_lite0_features():
    bb = build_backbone("efficientnet-lite0")
    with torch.no_grad():
        y = bb.module.eval()(torch.rand(2, 3, 64, 64))
    assert y.shape == (2, 1280) and bb.feature_dim == 1280 and bb.pretrained


@pytest.fixture(scope="module")
def official_layout_file(tmp_path_factory):
    """A file with the layout of the official resnet50.pth: torchvision names, no fc.*"""
    state = torchvision.models.resnet50(weights=None).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path_factory.mktemp("bt") / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_barlowtwins_loader_accepts_official_layout(official_layout_file):
    path, state = official_layout_file
    bb = build_backbone("resnet50-barlowtwins", weights=str(path))
    assert isinstance(bb.module.fc, torch.nn.Identity) and bb.feature_dim == 2048
    assert torch.equal(bb.module.conv1.weight, state["conv1.weight"])
    with torch.no_grad():
        assert bb.module.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2048)


def test_barlowtwins_loader_rejects_missing_keys(official_layout_file, tmp_path):
    _, state = official_layout_file
    broken = dict(state)
    del broken["layer2.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(BackboneWeightsError, match=r"layer2\.0\.conv1\.weight"):
        build_backbone("resnet50-barlowtwins", weights=str(path))


def test_barlowtwins_downloads_official_url_with_progress(official_layout_file, monkeypatch):
    _, state = official_layout_file
    calls = {}

    def fake_download(url, **kwargs):
        calls["url"], calls["kwargs"] = url, kwargs
        return dict(state)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    bb = build_backbone("resnet50-barlowtwins")
    assert calls["url"] == backbones.BARLOWTWINS_RESNET50_URL
    assert calls["kwargs"]["progress"] is True and calls["kwargs"]["weights_only"] is True
    assert bb.weights_source == backbones.BARLOWTWINS_RESNET50_URL


def test_barlowtwins_download_failure_says_what_to_do(monkeypatch):
    """Offline: a clear error that names the URL and the two ways out, not urllib's traceback."""
    import urllib.error

    def offline(url, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneWeightsError, match=r"could not download.*--backbone-weights"):
        build_backbone("resnet50-barlowtwins")


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg99")


@pytest.mark.parametrize("name", ["resnet50-barlowtwins", "efficientnet-lite0", "resnet18"])
def test_architecture_only_reads_and_fetches_nothing(name, monkeypatch):
    """Checkpoints that carry the backbone's tensors build it without any weights source."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were read or fetched")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    bb = build_backbone(name, pretrained=False)
    assert bb.weights_source == "checkpoint"
    with torch.no_grad():
        assert bb.module.eval()(torch.rand(1, 3, 64, 64)).shape == (1, bb.feature_dim)


def test_only_registered_sources_pass():
    from bta_core.backbones import DEFAULT_SOURCES, check_registered_source

    for name, source in DEFAULT_SOURCES.items():
        check_registered_source(name, None)
        check_registered_source(name, source)
    for bad in ("http://example.org/w.pth", "/tmp/w.pth", DEFAULT_SOURCES["resnet18"] + " "):
        with pytest.raises(ValueError, match="may not name a URL or file"):
            check_registered_source("resnet50-barlowtwins", bad)
