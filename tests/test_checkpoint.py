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
