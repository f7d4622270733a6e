"""The network: output contract, determinism, batch independence, gradients, every preset."""

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from models.build import build_focus
from models.config import PRESETS, get_preset


def _inputs(batch, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=g), torch.rand(batch, 3, h, w, generator=g)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (160, 96)])
def test_eval_outputs_follow_the_onnx_contract(tiny_model, size):
    image, edges = _inputs(2, *size)
    with torch.no_grad():
        probs, logits = tiny_model(image, edges)
    assert probs.shape == (2, 2, 2)
    assert logits.shape == (2, 2, size[0] // 4, size[1] // 4)
    assert torch.all(probs >= 0) and torch.all(probs.sum(-1) <= 1 + 1e-6)
    assert torch.isfinite(logits).all()


def test_eval_is_deterministic_and_batch_independent(tiny_model):
    image, edges = _inputs(3, 64, 96)
    with torch.no_grad():
        p_batch, l_batch = tiny_model(image, edges)
        p_again, l_again = tiny_model(image, edges)
        p_one, l_one = tiny_model(image[1:2], edges[1:2])
    assert torch.equal(p_batch, p_again) and torch.equal(l_batch, l_again)
    assert torch.allclose(p_one[0], p_batch[1], atol=1e-5)
    assert torch.allclose(l_one[0], l_batch[1], atol=1e-4)


def test_edges_and_image_both_change_the_output(tiny_model):
    """Catches a dead edge branch or a disconnected ViT."""
    with torch.no_grad():
        for _n, m in tiny_model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial BN statistics
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        tiny_model.backbone.interactions[0].injector.gamma.fill_(0.5)
        image, edges = _inputs(1, 64, 64)
        _, base = tiny_model(image, edges)
        _, other_edges = tiny_model(image, torch.rand_like(edges))
        _, other_image = tiny_model(torch.randn_like(image), edges)
    assert (base - other_edges).abs().max() > 1e-4
    assert (base - other_image).abs().max() > 1e-4


def test_training_step_reaches_every_trainable_parameter(tiny_config):
    torch.manual_seed(0)
    # stochastic depth off: a dropped block legitimately gets no gradient in that step
    model = build_focus(dataclasses.replace(tiny_config, drop_path_rate=0.0)).train()
    with torch.no_grad():
        # Zero-initialised tensors (injector gamma, deformable offset/weight projections) block
        # gradients at step 0 by design; perturb every parameter, as after some training.
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    clip_text = torch.nn.functional.normalize(torch.randn(3, tiny_config.clip_embed_dim), dim=-1)
    image, edges = _inputs(2, 64, 64)
    out = model(image, edges, clip_text=clip_text)
    assert out["pred_logits"].shape == (2, 2, 3) and out["pred_boxes"].shape == (2, 2, 4)
    assert len(out["aux_outputs"]) == tiny_config.dec_layers
    loss = out["pred_logits"].sum() + out["pred_masks"].mean() + out["pred_boxes"].sum()
    loss = loss + sum(v.sum() for v in out["pred_queries"].values())
    for aux in out["aux_outputs"]:
        loss = loss + aux["pred_masks"].mean() + aux["pred_logits"].sum()
    loss.backward()
    # The CLIP towers are frozen in training; the mask prompt embedding is dead by construction
    # in the reference (its pooled mask is always 1) and non_object_embedding is never used.
    exempt = ("clip_refiner.",)
    dead = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad
        and not n.split("predictor.")[-1].startswith(exempt)
        and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert dead == [], dead


def test_gamma_zero_injector_still_gets_gradient(tiny_config):
    torch.manual_seed(0)
    model = build_focus(dataclasses.replace(tiny_config, with_clip=False)).train()
    out = model(*_inputs(2, 64, 64))
    out["pred_masks"].mean().backward()
    assert model.backbone.interactions[0].injector.gamma.grad.abs().sum() > 0


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_that_fit_in_memory_run(preset):
    config = dataclasses.replace(get_preset(preset), with_clip=False)
    model = build_focus(config).eval()
    image, edges = _inputs(1, 64, 96)
    with torch.no_grad():
        probs, logits = model(image, edges)
    assert probs.shape == (1, 2, 2) and logits.shape == (1, 2, 16, 24)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"  # beside the repository
TRAINING_ONLY = ("clip_refiner", "text_embed", "image_embed")  # DESIGN: never run at inference


def _inference_only(name: str) -> bool:
    return not any(part in TRAINING_ONLY for part in name.split("."))


def _documented_sizes() -> dict[str, tuple[int, int]]:
    """The docs/models.md table: preset -> (parameters, inference parameters)."""
    rows = re.findall(r"^\| (\w+) \| ([\d,]+) \| ([\d,]+) \|$", DOCS.read_text(), re.M)
    return {name: (int(a.replace(",", "")), int(b.replace(",", ""))) for name, a, b in rows}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_with_its_documented_size(preset):
    with torch.device("meta"):
        model = build_focus(get_preset(preset))
    total = sum(p.numel() for p in model.parameters())
    inference = sum(p.numel() for n, p in model.named_parameters() if _inference_only(n))
    assert _documented_sizes()[preset] == (total, inference)
    if preset == "tiny":
        # the demo models ship fp32 ONNX and safetensors of at most 10 MB
        assert inference * 4 < 10e6


@pytest.mark.parametrize("preset", ["large", "giant"])
def test_inference_tensors_are_the_reference_checkpoints_minus_training_only(preset):
    """Counted independently from the reference's own state-dict listing."""
    tsv = REFERENCE / f"official_focus_dinov2_{preset}_state_dict.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not found (../shared is not beside this checkout)")
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:] if line]
    reference = sum(
        1 if shape == "scalar" else math.prod(int(d) for d in shape.split("x"))
        for name, shape, _ in rows
        if _inference_only(name) and name != "criterion.empty_weight"
    )
    with torch.device("meta"):
        state = build_focus(get_preset(preset)).state_dict()
    ours = sum(t.numel() for n, t in state.items() if _inference_only(n))
    assert ours == reference


def test_tiny_golden_output():
    """Pins the tiny network's function: a refactor that changes the maths fails here."""
    golden = np.load(Path(__file__).with_name("golden_tiny.npz"))
    torch.manual_seed(0)
    model = build_focus(get_preset("tiny")).eval()
    image, edges = _inputs(1, 64, 96, seed=1)
    with torch.no_grad():
        probs, logits = model(image, edges)
    np.testing.assert_allclose(probs.numpy(), golden["class_probs"], atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), golden["mask_logits"], atol=1e-4)
