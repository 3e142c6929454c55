"""Checkpoints: exact round trip on real images, no pickle, clear errors, atomic writes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bta_core.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from bta_core.imageio import load_image
from bta_core.model import BTAModel, ModelConfig, embed_images


@pytest.fixture(scope="module")
def images(bccd_images, dsb_images):
    return [load_image(p) for p in bccd_images[:3] + dsb_images[:3]]


def test_round_trip_reproduces_scores(tmp_path, tiny_model, images):
    # perturb BN running stats so they differ from defaults and must be saved
    tiny_model.projector.bn.running_mean.add_(0.3)
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    z1, z2 = embed_images(tiny_model, images), embed_images(loaded, images)
    assert torch.equal(z1, z2)
    assert torch.equal(tiny_model.score_matrix(z1, z1), loaded.score_matrix(z2, z2))
    assert read_config(path) == tiny_model.config
    tiny_model.projector.bn.running_mean.sub_(0.3)


def test_checkpoint_is_plain_safetensors(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    assert any(k.startswith("projector.") for k in tensors) and any(
        k.startswith("head.") for k in tensors
    )
    assert not any(k.startswith("backbone.") for k in tensors)  # pretrained backbone not copied
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_random_backbone_is_stored(tmp_path):
    cfg = ModelConfig.for_backbone(
        "resnet18", projector_dim=32, image_size=32, backbone_in_checkpoint=True
    )
    model = BTAModel(cfg).eval()
    path = save_checkpoint(model, tmp_path / "r.safetensors")
    loaded = load_checkpoint(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_shape_mismatch_is_clear(tmp_path, tiny_model):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    cfg = json.loads(meta["bta_config"])
    cfg["projector_sizes"][-1] = 128
    meta["bta_config"] = json.dumps(cfg)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(bad)


@pytest.mark.parametrize(
    "content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "]
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.safetensors"):
        load_checkpoint(path)


def test_pickle_file_is_refused(tmp_path, tiny_model):
    path = tmp_path / "pickled.pt"
    torch.save({"model": tiny_model.state_dict()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")


# ---------------------------------------------------------------------------------------------
# hostile checkpoints: a file is data; it may not make the tool fetch, read or compute garbage


def _rewrite(src, dst, config=None, tensors=None):
    """Copy checkpoint ``src`` to ``dst`` with config keys and/or tensors replaced."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    cfg = json.loads(meta["bta_config"])
    cfg.update(config or {})
    meta["bta_config"] = json.dumps(cfg)
    all_tensors = load_file(str(src))
    all_tensors.update(tensors or {})
    save_file(all_tensors, str(dst), metadata=meta)
    return dst


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model):
    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("ck") / "good.safetensors")


@pytest.fixture
def no_fetch(monkeypatch):
    """Fail the test if anything tries to download or torch.load a file."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError(f"fetch attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize(
    "config",
    [
        {"backbone_weights": "http://127.0.0.1:9/evil.pth"},
        {
            "backbone_weights": "https://example.org/resnet50.pth",
            "backbone": "resnet50-barlowtwins",
            "projector_sizes": [2048, 256, 256, 256],
        },
        {"backbone_weights": "/etc/passwd"},
        {"backbone_weights": "file:///etc/passwd", "backbone_in_checkpoint": True},
    ],
)
def test_checkpoint_naming_url_or_file_is_refused_before_any_fetch(
    tmp_path, saved, no_fetch, config
):
    bad = _rewrite(saved, tmp_path / "url.safetensors", config=config)
    with pytest.raises(CheckpointError, match="url.safetensors: .*not the registered source"):
        load_checkpoint(bad)


def test_registered_source_by_name_is_accepted(tmp_path, saved):
    from bta_core.backbones import DEFAULT_SOURCES

    ok = _rewrite(
        saved,
        tmp_path / "named.safetensors",
        config={"backbone_weights": DEFAULT_SOURCES["efficientnet-lite0"]},
    )
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(ok)(x), load_checkpoint(saved)(x))


def _head_key(saved):
    return sorted(
        k for k in load_file(str(saved)) if k.startswith("head.") and k.endswith("weight")
    )[0]


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda t: t.to(torch.int8), "dtype torch.int8; weights must be floating point"),
        (lambda t: t > 0, "dtype torch.bool"),
        (lambda t: t.masked_fill(torch.rand_like(t) < 0.1, float("nan")), "NaN or infinite"),
        (lambda t: t.masked_fill(torch.rand_like(t) < 0.1, float("inf")), "NaN or infinite"),
    ],
)
def test_bad_tensor_values_are_refused(tmp_path, saved, change, problem):
    key = _head_key(saved)
    tensor = load_file(str(saved))[key]
    bad = _rewrite(saved, tmp_path / "t.safetensors", tensors={key: change(tensor).contiguous()})
    with pytest.raises(CheckpointError, match=problem) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and key in str(err.value)


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"image_size": "224"}, "image_size"),
        ({"image_size": 10**7}, "image_size"),
        ({"head_sizes": []}, "head_sizes"),
        ({"head_sizes": [512, -4]}, "head_sizes"),
        ({"projector_sizes": [1280, 10**5, 10**5]}, "projector_sizes"),
        ({"projector_sizes": [1280, 60000, 60000, 60000]}, "weights"),
        ({"projector_sizes": [999, 256, 256, 256]}, "1280-d features"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"backbone": "vgg99"}, "backbone"),
        ({"backbone_in_checkpoint": "yes"}, "backbone_in_checkpoint"),
        ({"recipe": "x"}, "recipe"),
        ({"surprise": 1}, "unknown keys"),
        ({"head": "exec"}, "head 'exec' is not one of"),
        ({"head": "symmetric", "head_sizes": [64, 16, 4]}, "symmetric head"),
        ({"calibration": {"probability": "platt"}}, "calibration.probability must be"),
        ({"calibration": {"probability": {"platt": [float("nan"), 0.0]}}}, "platt must be"),
        ({"calibration": {"probability": {"platt": ["1", 0]}}}, "platt must be"),
        ({"calibration": {"probability": {"platt": [1.0]}}}, "platt must be"),
        ({"calibration": {"probability": {"platt": [-0.5, 1.0]}}}, "slope"),
        ({"calibration": {"probability": {"platt": [1.0, 0.0], "pairs": -3}}}, "pairs"),
        ({"calibration": {"probability": {"platt": [1.0, 0.0], "fitted_on": 7}}}, "fitted_on"),
    ],
)
def test_bad_config_values_give_one_clear_error(tmp_path, saved, no_fetch, config, problem):
    bad = _rewrite(saved, tmp_path / "c.safetensors", config=config)
    for read in (read_config, load_checkpoint):
        with pytest.raises(CheckpointError, match=problem) as err:
            read(bad)
        assert str(err.value).startswith(f"{bad}: invalid model config")


def test_pickled_weights_are_refused_without_suggesting_weights_only_false(tmp_path):
    import argparse

    from bta_core.backbones import BackboneWeightsError, build_backbone

    path = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1), "args": argparse.Namespace(evil=True)}, path)
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("resnet50-barlowtwins", weights=str(path))
    assert "refused" in str(err.value) and str(path) in str(err.value)
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None
    from bta_core.training.loop import load_barlowtwins_projector  # --init-projector: the same rule

    with pytest.raises(BackboneWeightsError, match="refused") as err:
        load_barlowtwins_projector(str(path))
    assert "weights_only" not in str(err.value)


def test_backbone_from_a_local_file_travels_inside_the_checkpoint(tmp_path, images):
    """A model built on a local weights file saves that backbone, so loading reads no file."""
    import torchvision

    from bta_core.model import to_model_input

    weights = tmp_path / "r18.pth"
    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    torch.save(net.state_dict(), weights)
    cfg = ModelConfig.for_backbone(
        "resnet18", projector_dim=32, image_size=64, backbone_weights=str(weights)
    )
    model = BTAModel(cfg).eval()
    path = save_checkpoint(model, tmp_path / "local.safetensors")
    weights.unlink()
    loaded = load_checkpoint(path)
    assert loaded.config.backbone_in_checkpoint
    x = to_model_input(images[:2], 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_models_listing_marks_bad_cached_checkpoints_unreadable(tmp_path, saved, capsys):
    import os
    import shutil

    from bta_core.cli import main as cli_main

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(saved, cache / "good.safetensors")
    _rewrite(saved, cache / "nan_threshold.safetensors", config={"threshold": float("nan")})
    _rewrite(saved, cache / "string_size.safetensors", config={"image_size": "224"})
    (cache / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (cache / "folder.safetensors").mkdir()
    os.mkfifo(cache / "pipe.safetensors")
    assert cli_main(["models", "--dir", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for bad in ("nan_threshold", "string_size", "garbage", "folder", "pipe"):
        [line] = [ln for ln in lines if ln.startswith(bad)]
        assert "unreadable:" in line and f"{bad}.safetensors" in line
    assert any(ln.startswith("good ") and "unreadable" not in ln for ln in lines)


def test_probability_mapping_round_trip(tmp_path, tiny_model):
    from dataclasses import replace

    from bta_core.calibration import anchored_platt, score_probability

    old = save_checkpoint(tiny_model, tmp_path / "old.safetensors")
    assert score_probability(load_checkpoint(old).config.calibration, 0.93) == 0.93  # raw score
    record = {"platt": anchored_platt(0.7, 0.9), "fitted_on": "test pairs", "pairs": 12}
    cfg = replace(tiny_model.config, threshold=0.9, calibration={"probability": record})
    model = BTAModel(cfg).eval()
    model.load_state_dict(tiny_model.state_dict())
    path = save_checkpoint(model, tmp_path / "cal.safetensors", half=True)
    loaded = load_checkpoint(path).config.calibration
    assert loaded["probability"] == record
    assert score_probability(loaded, 0.9) == pytest.approx(0.5)
    assert score_probability(loaded, 0.93) > 0.5 > score_probability(loaded, 0.85)
