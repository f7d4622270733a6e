"""The precision-variant schema in focus.json (models/precision.py): round trip, gate verdicts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from models.config import ModelCard, make_card
from models.precision import (
    CARD_KEY,
    GateRefusedError,
    PrecisionGate,
    Variant,
    check_gate,
    file_sha256,
    trained_evidence,
    with_variant,
)


def _gate(**changes) -> PrecisionGate:
    base = PrecisionGate(
        soft_max_abs=0.02,
        soft_mean_abs=0.002,
        min_iou=0.995,
        images=8,
        image_set="export.parity images, seed 0",
        reference="onnxruntime fp32 model.onnx",
        model="salient tiny version 0",
        iou_enforced=True,
        trained_by="focus train, step 100",
    )
    return dataclasses.replace(base, **changes)


def test_gate_verdicts() -> None:
    assert _gate().passed and _gate().failures() == []
    assert _gate(soft_mean_abs=0.011).failures() == ["soft mean |diff| 0.011 > 0.01"]
    assert _gate(min_iou=0.98).failures() == ["binary IoU 0.9800 < 0.99"]
    assert _gate(min_iou=0.2, iou_enforced=False).passed  # random weights: IoU not enforced
    assert _gate(images=5).failures() == ["only 5 images (< 6)"]
    assert not _gate(soft_mean_abs=float("nan")).passed  # NaN never passes


def test_card_round_trip_keeps_variants(tmp_path) -> None:
    card = make_card("salient", "tiny")
    assert CARD_KEY not in card.to_dict()  # no variants: the card is unchanged
    v1 = Variant("onnxruntime", "int8", "model.int8.onnx", _gate(), {"mode": "dynamic"})
    v2 = Variant("openvino", "bf16", "model.onnx", _gate(min_iou=0.5), {})
    card = dataclasses.replace(card, variants=with_variant(with_variant((), v1), v2))
    card.save(tmp_path)
    raw = json.loads((tmp_path / "focus.json").read_text())
    assert set(raw[CARD_KEY]) == {"onnxruntime-int8", "openvino-bf16"}
    assert raw[CARD_KEY]["openvino-bf16"]["gate"]["passed"] is False
    loaded = ModelCard.load(tmp_path)
    assert {v.name: v for v in loaded.variants} == {v.name: v for v in (v1, v2)}
    replaced = with_variant(loaded.variants, dataclasses.replace(v2, gate=_gate()))
    assert len(replaced) == 2 and all(v.gate.passed for v in replaced)


def test_nan_is_written_as_null(tmp_path) -> None:
    v = Variant("onnxruntime", "int8", "model.int8.onnx", _gate(soft_mean_abs=float("nan")))
    card = dataclasses.replace(make_card("salient", "tiny"), variants=(v,))
    card.save(tmp_path)
    assert json.loads((tmp_path / "focus.json").read_text())[CARD_KEY]["onnxruntime-int8"][
        "gate"
    ]["soft_mean_abs"] is None
    assert not ModelCard.load(tmp_path).variants[0].gate.passed


def test_check_gate_messages() -> None:
    assert "no gate needed" in check_gate(None, "openvino", "fp32", "salient")
    with pytest.raises(GateRefusedError, match="has no accuracy gate"):
        check_gate(None, "onnxruntime", "int8", "salient")
    bad = Variant("onnxruntime", "int8", "model.int8.onnx", _gate(min_iou=0.9))
    with pytest.raises(GateRefusedError, match=r"binary IoU 0\.9000 < 0\.99.*FORCE_UNGATED"):
        check_gate(bad, "onnxruntime", "int8", "salient")
    good = Variant("onnxruntime", "int8", "model.int8.onnx", _gate())
    assert check_gate(good, "onnxruntime", "int8", "salient").startswith("gate passed")


def test_trained_evidence() -> None:
    assert trained_evidence({"source": "focus train", "step": 7}) == "focus train, step 7"
    assert trained_evidence({"imported_from": "official_L_random.pth"}) == ""
    assert trained_evidence({"hub": {"repo": "x"}}).startswith("released checkpoint")


def test_file_sha256(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"abc")
    assert file_sha256(path).startswith("ba7816bf")
    path.write_bytes(b"abcd")  # new size: not served from the memo
    assert file_sha256(path).startswith("88d4266f")
