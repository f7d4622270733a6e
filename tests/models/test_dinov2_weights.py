"""DINOv2 -> FOCUS ViT conversion and loading, torchvision ResNet-50 -> edge, state-dict reading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.config import FocusConfig, get_preset
from models.dinov2_weights import (
    convert_dinov2_state_dict,
    load_dinov2_into,
    load_resnet50_into_edge,
    resize_pos_embed,
    vit_target_shapes,
)
from models.weights import read_state_dict

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"  # beside the repository
SMALL = FocusConfig(
    embed_dim=24,
    depth=4,
    num_heads=3,
    deform_num_heads=3,
    interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)),
)


def original_dinov2(
    config: FocusConfig, chunks: int = 0, grid: int = 37
) -> dict[str, torch.Tensor]:
    """A DINOv2 ``*_reg4_pretrain.pth`` layout with random values (``block_chunks=chunks``)."""
    g = torch.Generator().manual_seed(0)
    d, p = config.embed_dim, config.patch_size

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    sd = {
        "cls_token": r(1, 1, d),
        "pos_embed": r(1, grid * grid + 1, d),
        "register_tokens": r(1, 4, d),
        "mask_token": r(1, d),
        "patch_embed.proj.weight": r(d, 3, p, p),
        "patch_embed.proj.bias": r(d),
    }
    ffn = {
        k.split(".", 3)[3]: v
        for k, v in vit_target_shapes(config).items()
        if k.startswith("backbone.blocks.0.mlp.")
    }
    per_chunk = config.depth // chunks if chunks else 0
    for n in range(config.depth):
        block = f"blocks.{n // per_chunk}.{n}" if chunks else f"blocks.{n}"
        for name, shape in {
            "norm1.weight": (d,),
            "norm1.bias": (d,),
            "attn.qkv.weight": (3 * d, d),
            "attn.qkv.bias": (3 * d,),
            "attn.proj.weight": (d, d),
            "attn.proj.bias": (d,),
            "ls1.gamma": (d,),
            "norm2.weight": (d,),
            "norm2.bias": (d,),
            "ls2.gamma": (d,),
            **ffn,
        }.items():
            sd[f"{block}.{name}"] = r(*shape)
    sd["norm.weight"], sd["norm.bias"] = r(d), r(d)
    return sd


def expected_name(key: str) -> str | None:
    """The key map, spelled out independently of the implementation."""
    if key in ("register_tokens", "mask_token", "norm.weight", "norm.bias"):
        return None
    parts = key.split(".")
    if parts[0] == "blocks" and parts[2].isdigit():  # chunked
        parts = [parts[0], *parts[2:]]
    if parts[0] == "blocks" and parts[2] in ("ls1", "ls2"):
        parts = [parts[0], parts[1], "gamma" + parts[2][-1]]
    return "backbone." + ".".join(parts)


def module_with(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A module whose state dict has exactly these names and shapes (random values)."""
    root = nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(torch.randn(shape)))
    return root


def reference_vit_shapes(size: str) -> dict[str, tuple[int, ...]]:
    tsv = REFERENCE / f"official_focus_dinov2_{size}_state_dict.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not found")
    out = {}
    for line in tsv.read_text().splitlines()[1:]:
        name, shape, _ = line.split("\t")
        if name in ("backbone.pos_embed", "backbone.cls_token") or name.startswith(
            ("backbone.patch_embed.", "backbone.blocks.")
        ):
            out[name] = tuple(int(s) for s in shape.split("x"))
    return out


@pytest.mark.parametrize("size", ["large", "giant"])
def test_vit_target_shapes_match_the_reference_checkpoint(size: str) -> None:
    assert vit_target_shapes(get_preset(size)) == reference_vit_shapes(size)


@pytest.mark.parametrize("ffn_type", ["mlp", "swiglu"])
def test_convert_puts_every_tensor_where_it_belongs(ffn_type: str, caplog) -> None:
    config = FocusConfig(**{**SMALL.to_dict(), "ffn_type": ffn_type})
    sd = original_dinov2(config)
    with caplog.at_level(logging.INFO, logger="models.dinov2_weights"):
        out = convert_dinov2_state_dict(sd, config)
    assert {k: tuple(v.shape) for k, v in out.items()} == vit_target_shapes(config)
    for key, value in sd.items():
        name = expected_name(key)
        if name is not None:
            assert out[name] is value  # same grid: nothing copied or resized
    assert len(out) == len(sd) - 4
    assert "dropped ['register_tokens', 'mask_token', 'norm.weight', 'norm.bias']" in caplog.text


def test_chunked_checkpoint_converts_like_a_flat_one() -> None:
    flat = convert_dinov2_state_dict(original_dinov2(SMALL), SMALL)
    chunked_sd = original_dinov2(SMALL, chunks=2)
    assert "blocks.1.3.ls2.gamma" in chunked_sd
    chunked = convert_dinov2_state_dict(chunked_sd, SMALL)
    assert chunked.keys() == flat.keys()
    for key in flat:
        assert torch.equal(chunked[key], flat[key]), key


def test_pos_embed_is_resized_bicubically_to_the_config_grid() -> None:
    config = FocusConfig(**{**SMALL.to_dict(), "pretrain_size": 224})  # grid 16
    sd = original_dinov2(config, grid=37)
    out = convert_dinov2_state_dict(sd, config)["backbone.pos_embed"]
    assert out.shape == (1, 16 * 16 + 1, 24)
    assert torch.equal(out[:, 0], sd["pos_embed"][:, 0])
    grid = sd["pos_embed"][:, 1:].reshape(1, 37, 37, 24).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 256, 24))
    constant = resize_pos_embed(torch.full((1, 1 + 37 * 37, 2), 0.5), 16)
    torch.testing.assert_close(constant, torch.full((1, 257, 2), 0.5))


def test_convert_lists_missing_unexpected_and_mismatched_keys() -> None:
    sd = original_dinov2(SMALL)
    del sd["blocks.2.attn.qkv.bias"]
    sd["head.weight"] = torch.zeros(2)
    sd["blocks.0.ls1.gamma"] = torch.zeros(5)
    with pytest.raises(ValueError) as info:
        convert_dinov2_state_dict(sd, SMALL)
    message = str(info.value)
    assert "missing ['backbone.blocks.2.attn.qkv.bias']" in message
    assert "unexpected ['backbone.head.weight']" in message
    assert "backbone.blocks.0.gamma1: file (5,) vs model (24,)" in message


def test_load_dinov2_into_fills_only_the_vit(tmp_path: Path) -> None:
    shapes = {**vit_target_shapes(SMALL), "backbone.level_embed": (3, 24), "sem_seg_head.w": (2,)}
    model = module_with(shapes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = original_dinov2(SMALL, chunks=2)
    torch.save(sd, tmp_path / "dinov2_reg4.pth")
    load_dinov2_into(model, tmp_path / "dinov2_reg4.pth")
    after = model.state_dict()
    for key, value in sd.items():
        if expected_name(key) is not None:
            assert torch.equal(after[expected_name(key)], value), key
    assert torch.equal(after["backbone.level_embed"], before["backbone.level_embed"])
    assert torch.equal(after["sem_seg_head.w"], before["sem_seg_head.w"])


def test_load_dinov2_into_checks_against_the_model_itself(tmp_path: Path) -> None:
    shapes = vit_target_shapes(SMALL)
    shapes["backbone.blocks.0.attn.extra"] = (1,)  # a name the model has and DINOv2 does not
    torch.save(original_dinov2(SMALL), tmp_path / "d.pth")
    with pytest.raises(ValueError, match=r"missing \['backbone.blocks.0.attn.extra'\]"):
        load_dinov2_into(module_with(shapes), tmp_path / "d.pth")


def test_load_dinov2_into_the_tiny_focus_model(tmp_path: Path) -> None:
    from models import build

    config = get_preset("tiny")
    model = build.build_focus(config)
    vit = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k in ("backbone.pos_embed", "backbone.cls_token")
        or k.startswith(("backbone.patch_embed.", "backbone.blocks."))
    }
    assert vit == vit_target_shapes(config)
    sd = original_dinov2(config)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "dinov2.safetensors"))
    load_dinov2_into(model, tmp_path / "dinov2.safetensors")
    state = model.state_dict()
    for key, value in sd.items():
        if expected_name(key) is not None:
            assert torch.equal(state[expected_name(key)], value), key


def test_resnet50_weights_go_to_the_edge_module_without_fc(tmp_path: Path) -> None:
    edge = {
        "conv1.weight": (4, 3, 7, 7),
        "bn1.weight": (4,),
        "bn1.bias": (4,),
        "layer1.0.conv1.weight": (4, 4, 1, 1),
        "layer1.0.downsample.1.weight": (16,),
    }
    model = module_with(
        {
            **{f"backbone.edge.{k}": v for k, v in edge.items()},
            "backbone.edge.fc1.weight": (8, 16, 1, 1),
            "backbone.edge.fc1.bias": (8,),
        }
    )
    model.backbone.edge.bn1.register_buffer("num_batches_tracked", torch.tensor(0))
    fc1 = model.backbone.edge.fc1.weight.detach().clone()
    sd = {k: torch.randn(v) for k, v in edge.items()}
    sd["bn1.num_batches_tracked"] = torch.tensor(7)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(10, 16), torch.randn(10)  # the classifier
    torch.save(sd, tmp_path / "resnet50.pth")
    load_resnet50_into_edge(model, tmp_path / "resnet50.pth")
    state = model.state_dict()
    for key, value in sd.items():
        if not key.startswith("fc."):
            assert torch.equal(state[f"backbone.edge.{key}"], value), key
    assert torch.equal(state["backbone.edge.fc1.weight"], fc1)
    del sd["layer1.0.conv1.weight"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing \['backbone.edge.layer1.0.conv1.weight'\]"):
        load_resnet50_into_edge(model, tmp_path / "short.pth")


class NotATensor:
    pass


def test_read_state_dict_accepts_only_flat_tensor_dicts(tmp_path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match=r"expected a flat dict of tensors, found \['model'\]"):
        read_state_dict(tmp_path / "nested.pth")
    torch.save({"w": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        read_state_dict(tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")
