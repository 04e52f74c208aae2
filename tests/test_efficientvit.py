"""Tests for the EfficientViT-SAM L2 image encoder port."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    from napari_mobilesamv2.models import efficientvit as evit
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from napari_mobilesamv2.models import efficientvit as evit

# Key names and shapes fixed by the official EfficientViT-SAM L2 architecture.
KNOWN_SHAPES = {
    "backbone.stages.0.op_list.0.conv.weight": (32, 3, 3, 3),
    "backbone.stages.0.op_list.1.main.conv2.norm.running_var": (32,),
    "backbone.stages.1.op_list.0.main.spatial_conv.conv.weight": (512, 32, 3, 3),
    "backbone.stages.2.op_list.2.main.point_conv.conv.weight": (128, 512, 1, 1),
    "backbone.stages.3.op_list.8.main.depth_conv.conv.bias": (1024,),
    "backbone.stages.4.op_list.0.main.inverted_conv.conv.weight": (6144, 256, 1, 1),
    "backbone.stages.4.op_list.1.context_module.main.qkv.conv.weight": (1536, 512, 1, 1),
    "backbone.stages.4.op_list.1.context_module.main.aggreg.0.0.weight": (1536, 1, 5, 5),
    "backbone.stages.4.op_list.1.context_module.main.aggreg.0.1.weight": (1536, 32, 1, 1),
    "backbone.stages.4.op_list.8.context_module.main.proj.conv.weight": (512, 1024, 1, 1),
    "backbone.stages.4.op_list.8.local_module.main.inverted_conv.conv.bias": (3072,),
    "neck.input_ops.0.op_list.0.conv.weight": (256, 512, 1, 1),
    "neck.input_ops.2.op_list.0.norm.num_batches_tracked": (),
    "neck.middle.op_list.11.main.spatial_conv.conv.weight": (256, 256, 3, 3),
    "neck.output_ops.0.op_list.0.conv.bias": (256,),
    "norm.weight": (256,),
    "norm.bias": (256,),
}


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float tensor, BN statistics included, non-default values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.rand(value.shape, generator=gen)
            if key.endswith("running_var"):
                value.copy_(0.5 + noise)
            elif value.dim() <= 1:
                value.add_(0.2 * (noise - 0.5))
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomise(evit.build_efficientvit_l2_encoder())


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def output(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(image)


def test_state_dict_tensor_count(model: torch.nn.Module) -> None:
    assert evit.EFFICIENTVIT_L2_NUM_TENSORS == 508
    assert len(model.state_dict()) == evit.EFFICIENTVIT_L2_NUM_TENSORS


def test_known_keys_and_shapes(model: torch.nn.Module) -> None:
    sd = model.state_dict()
    for key, shape in KNOWN_SHAPES.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("image_encoder.") for k in sd)
    assert "backbone.stages.4.op_list.9.local_module.main.point_conv.conv.weight" not in sd


def test_eval_mode_norm_eps_and_gelu(model: torch.nn.Module) -> None:
    fresh = evit.build_efficientvit_l2_encoder()
    assert not fresh.training
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, evit.LayerNorm2d))]
    assert norms and all(m.eps == 1e-6 for m in norms)
    gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    assert gelus and all(m.approximate == "tanh" for m in gelus)


def test_output_shape(output: torch.Tensor) -> None:
    assert output.shape == (1, 256, 64, 64)
    assert output.dtype == torch.float32
    assert torch.isfinite(output).all()


def test_official_format_checkpoint_roundtrip(
    model: torch.nn.Module, image: torch.Tensor, output: torch.Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "l2.pt"
    sd = {"image_encoder." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd}, path)

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    loaded = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    fresh = evit.build_efficientvit_l2_encoder()
    fresh.load_state_dict(loaded, strict=True)
    with torch.inference_mode():
        again = fresh(image)
    assert torch.equal(again, output)


def test_strict_load_reports_missing_and_unexpected_keys(model: torch.nn.Module) -> None:
    fresh = evit.build_efficientvit_l2_encoder()
    key = "backbone.stages.4.op_list.1.context_module.main.qkv.conv.weight"

    missing = dict(model.state_dict())
    del missing[key]
    with pytest.raises(RuntimeError, match="Missing key") as err:
        fresh.load_state_dict(missing, strict=True)
    assert key in str(err.value)

    renamed = dict(model.state_dict())
    renamed["backbone.stages.4.op_list.1.context_module.main.qkv_renamed.conv.weight"] = renamed.pop(key)
    with pytest.raises(RuntimeError, match="Unexpected key") as err:
        fresh.load_state_dict(renamed, strict=True)
    assert "qkv_renamed" in str(err.value)
    assert key in str(err.value)
