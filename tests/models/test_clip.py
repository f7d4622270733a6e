"""CLIP refiner, towers, ProjectionHead, OpenAI weight loading and the BPE tokenizer."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from models.clip import (
    ClipRefiner,
    ProjectionHead,
    build_clip_refiner,
    freeze_clip_except_mask_embedding,
    load_openai_clip,
)
from models.clip_tokenizer import VILD_TEMPLATES, ClipTokenizer, bytes_to_unicode, token_pattern
from models.config import get_preset

# shared/ sits beside the repository (CI: beside the fresh clone).
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
TSV = REFERENCE / "official_focus_dinov2_large_state_dict.tsv"
PREDICTOR = "sem_seg_head.predictor."


def reference_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    if not TSV.is_file():
        pytest.skip(f"reference state-dict listing not found at {TSV}")
    shapes = {}
    for line in TSV.read_text().splitlines()[1:]:
        name, shape, _ = line.split("\t")
        if name.startswith(prefix):
            shapes[name[len(prefix) :]] = (
                () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
            )
    return shapes


@pytest.fixture(scope="module")
def tiny() -> ClipRefiner:
    torch.manual_seed(0)
    return build_clip_refiner(get_preset("tiny")).eval()


def test_large_clip_refiner_has_reference_names_and_shapes() -> None:
    with torch.device("meta"):
        refiner = build_clip_refiner(get_preset("large"))
    ours = {k: tuple(v.shape) for k, v in refiner.state_dict().items()}
    assert ours == reference_shapes(PREDICTOR + "clip_refiner.")
    assert len(ours) == 306


@pytest.mark.parametrize("head", ["text_embed", "image_embed"])
def test_projection_head_has_reference_names_and_shapes(head: str) -> None:
    with torch.device("meta"):
        module = ProjectionHead(512, 512)
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert ours == reference_shapes(f"{PREDICTOR}{head}.")


def test_projection_head_normalises_over_the_query_axis() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(8, 16).train()
    x = torch.randn(4, 2, 8)
    out = head(x)
    assert out.shape == (4, 2, 16)
    p = head.projection(x)
    h = head.fc(head.gelu(p))  # [B, Q, P]; BN statistics per query over (batch, features)
    mean = h.mean(dim=(0, 2), keepdim=True)
    var = h.var(dim=(0, 2), unbiased=False, keepdim=True)
    expected = torch.nn.functional.layer_norm(
        p + (h - mean) / torch.sqrt(var + 1e-5), (16,), head.layer_norm.weight, head.layer_norm.bias
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_text_tower_is_causal(tiny: ClipRefiner) -> None:
    tokens = torch.randint(1, 400, (2, 77))
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 400
    with torch.no_grad():
        a = tiny.clip_model.text_hidden_states(tokens)
        b = tiny.clip_model.text_hidden_states(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().amax(dim=-1).min() > 0  # every later position moves


def test_encode_text_reads_the_eot_token(tiny: ClipRefiner) -> None:
    vocab = get_preset("tiny").clip_vocab_size
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[0, :5] = torch.tensor([vocab - 2, 10, 11, 12, vocab - 1])  # SOT a b c EOT
    tokens[1, :3] = torch.tensor([vocab - 2, 13, vocab - 1])
    with torch.no_grad():
        feats = tiny.clip_model.encode_text(tokens)
        hidden = tiny.clip_model.text_hidden_states(tokens)
        padded = tokens.clone()
        padded[:, 40] = 7  # after EOT: causal, so the EOT feature cannot change
        feats_padded = tiny.clip_model.encode_text(padded)
    projection = tiny.clip_model.text_projection
    # The same [2, width] @ [width, E] product as encode_text's, so the same BLAS kernel: a
    # vector-matrix product may take another kernel (AVX-512 / AMX) and round differently.
    at_eot = torch.stack([hidden[0, 4], hidden[1, 2]])  # SOT a b c EOT; SOT d EOT
    torch.testing.assert_close(feats, at_eot @ projection, rtol=0, atol=0)
    torch.testing.assert_close(feats, feats_padded, rtol=0, atol=0)


def test_text_features_ensemble_templates(tiny: ClipRefiner) -> None:
    prompts = [torch.randint(1, 400, (3, 77)), torch.randint(1, 400, (2, 77))]
    with torch.no_grad():
        out = tiny.text_features(prompts)
        expected = []
        for tokens in prompts:
            f = tiny.clip_model.encode_text(tokens)
            f = (f / f.norm(dim=-1, keepdim=True)).mean(0)
            expected.append(f / f.norm())
    assert out.shape == (2, 64)
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-6, atol=1e-6)


def test_encode_regions_is_normalised_deterministic_and_mask_dependent(tiny: ClipRefiner) -> None:
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    masks = torch.rand(2, 2, 224, 224)
    with torch.no_grad():
        a = tiny.encode_regions(images, masks)
        b = tiny.encode_regions(images, masks)
        c = tiny.encode_regions(images, 1 - masks)
        # 0..255-scale pixels, as if CLIP's normalisation were not stacked on ImageNet's.
        raw = tiny.encode_regions(images * 60 + 120, masks)
        raw_c = tiny.encode_regions(images * 60 + 120, 1 - masks)
    assert a.shape == (2, 2, 64)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Quirk: on ImageNet-normalised input the CLIP input is ~ -1.8 ± 0.03, so masks move the
    # features only slightly; they still move them.
    assert (a - c).abs().max() > 0
    assert (raw - raw_c).abs().max() > max(1e-3, 10 * (a - c).abs().max())


def test_encode_regions_follows_reference_steps(tiny: ClipRefiner) -> None:
    """image·sigmoid(100 m_q), CLIP mean/std on top, prompted visual forward, L2-normalise."""
    torch.manual_seed(2)
    images = torch.randn(1, 3, 224, 224)
    masks = torch.rand(1, 2, 224, 224)
    with torch.no_grad():
        out = tiny.encode_regions(images, masks)
        for q in range(2):
            prompt = torch.sigmoid(100 * masks[:, q : q + 1])
            region = (images * prompt - tiny.pixel_mean) / tiny.pixel_std
            feat = tiny.clip_model.visual(region, prompt)
            torch.testing.assert_close(out[:, q], feat / feat.norm(dim=-1, keepdim=True))


def test_mask_prompt_is_inert_for_focus_masks(tiny: ClipRefiner) -> None:
    """Quirk (OFFICIAL_TRAINING §6.4): sigmoid(100·m) >= 0.5, so ceil(avg) == 1 everywhere."""
    torch.manual_seed(3)
    visual = tiny.clip_model.visual
    regions = torch.randn(2, 3, 224, 224)
    prompt = torch.sigmoid(100 * torch.rand(2, 1, 224, 224))
    prompt[0, :, :32, :32] = 0.5  # the smallest possible value
    assert torch.equal(visual.patch_keep(prompt), torch.ones(2, 196, 1))
    visual.zero_grad()
    out = visual(regions, prompt)
    out.sum().backward()
    assert torch.equal(out, visual(regions, None))
    assert torch.count_nonzero(visual.mask_embedding.grad) == 0
    visual.zero_grad(set_to_none=True)


def test_mask_prompt_replaces_fully_masked_patches(tiny: ClipRefiner) -> None:
    """Only a patch whose mask is exactly 0 gets mask_embedding (depth 3 on a 2-block tower)."""
    torch.manual_seed(4)
    visual = tiny.clip_model.visual
    regions = torch.randn(1, 3, 224, 224)
    mask = torch.ones(1, 1, 224, 224)
    mask[..., :16, :32] = 0  # patches 0 and 1 of the 14x14 grid
    visual.zero_grad(set_to_none=True)
    out = visual(regions, mask)
    out.sum().backward()
    grad = visual.mask_embedding.grad  # [3, 196, 64]
    assert (out - visual(regions, None)).abs().max() > 1e-4
    used = grad.abs().sum(-1) > 0  # [3, 196]
    assert used[0].nonzero().flatten().tolist() == [0, 1]  # before block 0
    assert used[1].nonzero().flatten().tolist() == [0, 1]  # after block 0
    assert not used[2].any()  # after the last block: only the class token is read
    visual.zero_grad(set_to_none=True)


def test_encode_regions_rejects_wrong_size(tiny: ClipRefiner) -> None:
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 224, 224\]"):
        tiny.encode_regions(torch.zeros(1, 3, 112, 112), torch.zeros(1, 2, 112, 112))


def test_freeze_leaves_only_mask_embedding_and_non_object_trainable() -> None:
    refiner = build_clip_refiner(get_preset("tiny"))
    freeze_clip_except_mask_embedding(refiner)
    trainable = sorted(n for n, p in refiner.named_parameters() if p.requires_grad)
    assert trainable == ["clip_model.visual.mask_embedding", "non_object_embedding"]


def _openai_style_state_dict(refiner: ClipRefiner) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in refiner.clip_model.state_dict().items()}
    del sd["visual.mask_embedding"]  # OpenAI CLIP has no mask prompt
    sd["input_resolution"] = torch.tensor(224)  # metadata in OpenAI's TorchScript state dict
    return sd


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_load_openai_clip_copies_every_tensor(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(5)
    source = build_clip_refiner(get_preset("tiny"))
    sd = _openai_style_state_dict(source)
    path = tmp_path / f"clip{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.half() for k, v in sd.items() if k != "input_resolution"}, str(path))
    else:
        torch.save(sd, path)
    target = build_clip_refiner(get_preset("tiny"))
    mask_before = target.clip_model.visual.mask_embedding.detach().clone()
    load_openai_clip(target, path)
    loaded = target.clip_model.state_dict()
    for key, value in sd.items():
        if key != "input_resolution":
            expected = value.half().float() if suffix == ".safetensors" else value  # fp16 file
            assert loaded[key].dtype == torch.float32
            torch.testing.assert_close(loaded[key], expected, rtol=0, atol=0)
    assert torch.equal(target.clip_model.visual.mask_embedding, mask_before)


def test_load_openai_clip_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    refiner = build_clip_refiner(get_preset("tiny"))
    sd = _openai_style_state_dict(refiner)
    del sd["ln_final.bias"]
    sd["visual.extra"] = torch.zeros(1)
    sd["visual.proj"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as info:
        load_openai_clip(refiner, tmp_path / "bad.pt")
    message = str(info.value)
    assert "missing ['ln_final.bias']" in message
    assert "unexpected ['visual.extra']" in message
    assert "visual.proj: file (3, 3) vs model (64, 64)" in message


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_load_openai_clip_explains_torchscript_archives(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-16.pt"  # what OpenAI publishes and clip.load reads
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ValueError, match="TorchScript archive"):
        load_openai_clip(build_clip_refiner(get_preset("tiny")), path)


# --- tokenizer -------------------------------------------------------------------------------

BACKENDS = [False, pytest.param(True, id="regex")]


def _backend(use_regex: bool) -> bool:
    if use_regex:
        pytest.importorskip("regex")
    return use_regex


def write_merges(path: Path, merges: list[str], compress: bool = True) -> Path:
    text = "#version: 0.2\n" + "\n".join(merges) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


@pytest.fixture
def merges_file(tmp_path: Path) -> Path:
    return write_merges(
        tmp_path / "bpe.txt.gz", ["l l", "h e", "he ll", "hell o</w>", "a a</w>", "a a"]
    )


def test_bytes_to_unicode_is_a_reversible_printable_map() -> None:
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == chr(256 + 32)
    assert all(not c.isspace() for c in table.values())


@pytest.mark.parametrize("use_regex", BACKENDS)
def test_merges_apply_in_rank_order(merges_file: Path, use_regex: bool) -> None:
    tok = ClipTokenizer(merges_file, use_regex=_backend(use_regex))
    assert tok.vocab_size == 512 + 6 + 2
    assert tok.encode("hello") == [512 + 3]  # l+l, h+e, he+ll, hell+o</w>
    # "aaa" -> a a a</w>: rank 4 (a, a</w>) beats rank 5 (a, a), leaving "a aa</w>".
    assert tok.encode("aaa") == [tok.encoder["a"], tok.encoder["aa</w>"]]
    assert tok.bpe("aaa") == "a aa</w>"
    reordered = write_merges(merges_file.with_name("r.gz"), ["a a", "a a</w>"])
    assert ClipTokenizer(reordered, use_regex=_backend(use_regex)).bpe("aaa") == "aa a</w>"


@pytest.mark.parametrize("use_regex", BACKENDS)
def test_tokenize_adds_sot_eot_and_pads(merges_file: Path, use_regex: bool) -> None:
    tok = ClipTokenizer(merges_file, use_regex=_backend(use_regex))
    assert (tok.sot_token, tok.eot_token) == (518, 519)
    out = tok.tokenize(["hello", "hello hello"], context_length=6)
    assert out.dtype == torch.long
    assert out.tolist() == [[518, 515, 519, 0, 0, 0], [518, 515, 515, 519, 0, 0]]
    assert out.argmax(-1).tolist() == [2, 3]  # EOT is the highest id: the text tower's pooling


@pytest.mark.parametrize("use_regex", BACKENDS)
def test_encode_lowercases_and_cleans_whitespace(merges_file: Path, use_regex: bool) -> None:
    tok = ClipTokenizer(merges_file, use_regex=_backend(use_regex))
    assert tok.encode("  HeLLo \n\t  WORLD!? ") == tok.encode("hello world!?")
    assert tok.decode(tok.encode("Hello  world")) == "hello world "
    pieces = token_pattern(use_regex).findall("it's x2 ½ naïve!?")
    assert pieces == ["it", "'s", "x", "2", "½", "naïve", "!?"]


@pytest.mark.parametrize("use_regex", BACKENDS)
def test_unicode_apostrophe_is_straightened(merges_file: Path, use_regex: bool) -> None:
    tok = ClipTokenizer(merges_file, use_regex=_backend(use_regex))
    curly = "It\u2019s an image of shadow without background."
    assert tok.encode(curly) == tok.encode("It's an image of shadow without background.")
    assert tok.encode("it\u2019s")[-2:] == [tok.encoder["'"], tok.encoder["s</w>"]]


def test_tokenize_rejects_text_longer_than_the_context(merges_file: Path) -> None:
    tok = ClipTokenizer(merges_file, use_regex=False)
    with pytest.raises(ValueError, match="more than the context length 4"):
        tok.tokenize("hello hello hello", context_length=4)


def test_plain_text_merges_and_templates(tmp_path: Path) -> None:
    path = write_merges(tmp_path / "bpe.txt", ["h e", "he llo</w>"], compress=False)
    tok = ClipTokenizer(path, use_regex=False)
    out = tok.tokenize_templates("hello", context_length=40)
    assert out.shape == (len(VILD_TEMPLATES), 40) == (14, 40)
    assert tok.decode(out[0, 1 : out[0].argmax()].tolist()) == "a photo of a hello . "


def test_malformed_merges_line_is_reported(tmp_path: Path) -> None:
    path = write_merges(tmp_path / "bad.gz", ["h e", "oops"])
    with pytest.raises(ValueError, match=r"bad.gz:3: a merge line must be two symbols"):
        ClipTokenizer(path)
