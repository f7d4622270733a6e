"""The large and giant presets produce exactly the reference state-dict names and shapes."""

from pathlib import Path

import pytest
import torch

from models.build import build_focus
from models.config import get_preset
from models.official import DROPPED_KEYS

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def _reference_shapes(preset: str) -> dict[str, tuple[int, ...]]:
    path = SHARED / f"official_focus_dinov2_{preset}_state_dict.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found (../shared is not beside this checkout)")
    shapes = {}
    for line in path.read_text().splitlines()[1:]:
        name, shape, _ = line.split("\t")
        shapes[name] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return shapes


@pytest.mark.parametrize("preset", ["large", "giant"])
def test_state_dict_names_and_shapes_equal_the_reference(preset):
    reference = _reference_shapes(preset)
    with torch.device("meta"):
        model = build_focus(get_preset(preset))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # The only reference tensor outside the network is the loss's class weight, which the
    # import map drops explicitly (models.official.DROPPED_KEYS).
    expected = {k: v for k, v in reference.items() if k not in DROPPED_KEYS}
    missing = sorted(set(expected) - set(ours))
    extra = sorted(set(ours) - set(expected))
    mismatched = sorted(
        f"{k}: ours {ours[k]} vs reference {expected[k]}"
        for k in set(ours) & set(expected)
        if ours[k] != expected[k]
    )
    if missing or extra or mismatched:
        print("missing:", missing, "\nextra:", extra, "\nmismatched:", mismatched)
    assert (missing, extra, mismatched) == ([], [], [])
    assert len(reference) == {"large": 1488, "giant": 1712}[preset]
    assert set(reference) - set(ours) == set(DROPPED_KEYS)
