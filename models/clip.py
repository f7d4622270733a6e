"""The training-only CLIP refiner: OpenAI CLIP towers, the mask-prompted image forward, and the
ProjectionHead that maps CLIP features into the distillation space.

References: FOCUS ``focus/modeling/clip_refiner/{adapter,utils,text_template}.py``,
``third_party/CLIP/clip/model.py`` (the mask-prompt fork of OpenAI CLIP, via ov-seg/zsseg) and
``focus/modeling/transformer_decoder/focus_transformer_decoder.py`` (``ProjectionHead``);
OFFICIAL_TRAINING.md §1, §4, §6. Attribute names match the reference so that
``sem_seg_head.predictor.clip_refiner.*``, ``text_embed.*`` and ``image_embed.*`` load by name.

Never called at inference or in the exported graph (STYLE §7); the decoder calls
``encode_regions`` in training only.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import FocusConfig
from models.weights import load_subset, read_state_dict

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# Entries of a state dict saved from OpenAI's TorchScript model that are metadata, not weights.
_OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_CLIP_OPTIONAL = ("visual.mask_embedding",)  # FOCUS's addition: keeps its init when absent


class ProjectionHead(nn.Module):
    """out = layer_norm(p + dropout(bn1(fc(gelu(p))))), p = projection(x).

    Args:
        embedding_dim: input width (the CLIP embedding, 512 for ViT-B/16).
        projection_dim: output width (512 in the reference).
        num_queries: channels of ``bn1``, which normalises over the query axis (2: fg, bg).
        dropout: 0 in the reference.
    """

    def __init__(
        self,
        embedding_dim: int,
        projection_dim: int = 512,
        num_queries: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.projection = nn.Linear(embedding_dim, projection_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(projection_dim, projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(projection_dim)
        self.bn1 = nn.BatchNorm1d(num_queries)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, Q, embedding_dim] -> [B, Q, projection_dim]."""
        projected = self.projection(x)
        x = self.bn1(self.fc(self.gelu(projected)))  # BatchNorm1d sees (N=B, C=Q, L=dim)
        return self.layer_norm(self.dropout(x) + projected)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block; tokens are batch-first ([N, L, width])."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        # batch_first changes no parameter name or shape (in_proj_weight/bias, out_proj).
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class ClipTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ClipVisionTower(nn.Module):
    """CLIP ViT image tower with FOCUS's mask prompt (``mask_embedding``).

    Args:
        image_size: input side (224).
        patch_size: 16 for ViT-B/16.
        width, layers, heads: transformer size (768, 12, 12).
        output_dim: CLIP embedding width (512).
        mask_prompt_depth: how many token stages get the mask prompt (3 in FOCUS). As in the
            reference it may exceed ``layers`` (the tiny preset: 3 > 2); prompts past the last
            block touch only patch tokens, which the class-token output never reads.
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mask_prompt_depth: int,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        if mask_prompt_depth < 0:
            raise ValueError(f"mask_prompt_depth must be >= 0, got {mask_prompt_depth}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.mask_prompt_depth = mask_prompt_depth
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = ClipTransformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        # Not in OpenAI CLIP: FOCUS's mask prompt, initialised N(0, 0.02) like MAE's mask token.
        self.mask_embedding = nn.Parameter(
            torch.randn(mask_prompt_depth, self.grid_size**2, width) * 0.02
        )

    def patch_keep(self, mask: Tensor) -> Tensor:
        """mask [N, 1, H, W] -> keep [N, grid², 1]: ceil of the per-patch mean.

        A patch is replaced by the mask prompt only where the mask is exactly 0 over the whole
        patch. FOCUS passes sigmoid(100·m) with m in (0, 1), which is >= 0.5 everywhere, so keep is
        always 1 and ``mask_embedding`` never reaches the output (OFFICIAL_TRAINING §6 step 4).
        ceil has zero gradient, so no gradient reaches the mask through this path either.
        """
        pooled = F.avg_pool2d(mask.float(), self.patch_size, self.patch_size)  # [N, 1, g, g]
        return torch.ceil(pooled.flatten(1).unsqueeze(-1))  # [N, g², 1]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [N, 3, S, S] (CLIP-normalised), mask [N, 1, S, S] or None -> features [N, output_dim].

        With a mask, the patch tokens are prompted before the first block and after blocks
        0 .. depth-2: tokens = tokens·keep + mask_embedding[d]·(1 - keep), d = 0 .. depth-1;
        the class token is never prompted.
        """
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, g², width]
        keep = None
        if mask is not None and self.mask_prompt_depth > 0:
            keep = self.patch_keep(mask).to(x.dtype)  # [N, g², 1]
            x = x * keep + self.mask_embedding[0].to(x.dtype) * (1 - keep)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [N, 1, width]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [N, 1+g², width]
        x = self.ln_pre(x)
        for i, block in enumerate(self.transformer.resblocks):
            x = block(x)
            if keep is not None and i + 1 < self.mask_prompt_depth:
                emb = self.mask_embedding[i + 1].to(x.dtype)
                x = torch.cat([x[:, :1], x[:, 1:] * keep + emb * (1 - keep)], dim=1)
        return self.ln_post(x[:, 0]) @ self.proj  # [N, output_dim]


class ClipModel(nn.Module):
    """OpenAI CLIP (ViT image tower + causal text transformer), named as ``clip.model.CLIP``.

    Args:
        visual: the image tower.
        embed_dim: joint embedding width (512).
        context_length, vocab_size: 77, 49408.
        width, layers, heads: text transformer size (512, 12, 8).
    """

    causal_mask: Tensor  # a buffer (register_buffer)

    def __init__(
        self,
        *,
        visual: ClipVisionTower,
        embed_dim: int,
        context_length: int,
        vocab_size: int,
        width: int,
        layers: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.visual = visual
        self.transformer = ClipTransformer(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        # True above the diagonal = may not attend (a later token); not part of the checkpoint.
        causal = torch.ones(context_length, context_length, dtype=torch.bool).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        self._init_text()

    def _init_text(self) -> None:
        # CLIP.initialize_parameters (text side; the image tower keeps its own init).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        for block in self.transformer.resblocks:
            w = dict(block.named_parameters())
            nn.init.normal_(w["attn.in_proj_weight"], std=width**-0.5)
            nn.init.normal_(w["attn.out_proj.weight"], std=width**-0.5 * (2 * layers) ** -0.5)
            nn.init.normal_(w["mlp.c_fc.weight"], std=(2 * width) ** -0.5)
            nn.init.normal_(w["mlp.c_proj.weight"], std=width**-0.5 * (2 * layers) ** -0.5)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def text_hidden_states(self, tokens: Tensor) -> Tensor:
        """tokens [P, ctx] int64 -> [P, ctx, width] after ``ln_final``; causal attention."""
        ctx = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:ctx]  # [P, ctx, width]
        x = self.transformer(x, self.causal_mask[:ctx, :ctx])
        return self.ln_final(x)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """tokens [P, ctx] -> [P, embed_dim], read at EOT (the highest token id in each row)."""
        x = self.text_hidden_states(tokens)
        eot = tokens.argmax(dim=-1)  # [P]
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


class ClipRefiner(nn.Module):
    """FOCUS's ``FOCUSCLIPRefiner`` state: the CLIP model, a no-object text embedding and CLIP's
    pixel statistics.

    ``pixel_mean``/``pixel_std`` are *persistent* buffers, unlike STYLE §6, because the reference
    checkpoints hold them (``clip_refiner.pixel_mean/std``). ``non_object_embedding`` is kept for
    checkpoint compatibility: the reference concatenates it to the text features and the decoder
    drops it again (``text_feature[:-1]``), so it only ever sees weight decay.
    """

    pixel_mean: Tensor  # buffers (register_buffer)
    pixel_std: Tensor

    def __init__(self, *, clip_model: ClipModel) -> None:
        super().__init__()
        self.clip_model = clip_model
        embed_dim = clip_model.text_projection.shape[1]
        self.non_object_embedding = nn.Parameter(
            torch.randn(1, embed_dim) * clip_model.transformer.width**-0.5
        )
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255.0)

    @property
    def image_size(self) -> int:
        return self.clip_model.visual.image_size

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """token_ids [P, ctx] -> L2-normalised text features [P, E]."""
        return F.normalize(self.clip_model.encode_text(token_ids), dim=-1)

    def text_features(self, prompt_token_ids: list[Tensor]) -> Tensor:
        """One [T, ctx] token tensor per prompt (T templates) -> [P, E].

        Template ensemble as the reference's PromptExtractor: normalise each template's feature,
        average over templates, normalise again. The reference caches the result per string; CLIP
        is frozen, so callers can cache it too.
        """
        feats = [self.encode_text(tokens).mean(dim=0) for tokens in prompt_token_ids]  # [E] each
        return F.normalize(torch.stack(feats), dim=-1)  # [P, E]

    def encode_regions(self, images: Tensor, masks: Tensor) -> Tensor:
        """Mask-prompted CLIP features of each query's region (OFFICIAL_TRAINING §6 steps 1-4).

        Args:
            images: [B, 3, S, S], S = ``image_size``, ImageNet-normalised and already resized
                (the reference resizes the normalised batch bilinearly to 224).
            masks: [B, Q, S, S] in (0, 1): sigmoid(10 · mask logits), resized. Query q's region
                is chosen by index (q0 "fg", q1 "bg"), not by the predicted class.

        Returns:
            [B, Q, E] L2-normalised image features.

        Quirks kept from the reference: CLIP's mean/std (×255) is applied on top of the ImageNet
        normalisation, so the CLIP input is nearly constant (≈ -1.8); the mask prompt is
        sigmoid(100·m) >= 0.5, whose pooled ceil is always 1 (see ``ClipVisionTower.patch_keep``).
        The reference's bicubic/nearest resizes to 224 are identities at S = 224 and are omitted.
        """
        b, q, h, w = masks.shape
        if images.shape != (b, 3, h, w) or h != self.image_size or w != self.image_size:
            raise ValueError(
                f"expected images [B, 3, {self.image_size}, {self.image_size}] and masks "
                f"[B, Q, {self.image_size}, {self.image_size}], got {tuple(images.shape)} and "
                f"{tuple(masks.shape)}"
            )
        prompt = torch.sigmoid(masks * 100)  # [B, Q, S, S]
        regions = images.unsqueeze(1) * prompt.unsqueeze(2)  # [B, Q, 3, S, S]
        regions = (regions.flatten(0, 1) - self.pixel_mean) / self.pixel_std  # [B*Q, 3, S, S]
        feats = self.clip_model.visual(regions, prompt.flatten(0, 1).unsqueeze(1))  # [B*Q, E]
        return F.normalize(feats, dim=-1).view(b, q, -1)


def build_clip_refiner(config: FocusConfig) -> ClipRefiner:
    visual = ClipVisionTower(
        image_size=config.clip_image_size,
        patch_size=config.clip_patch_size,
        width=config.clip_vision_width,
        layers=config.clip_vision_layers,
        heads=config.clip_vision_heads,
        output_dim=config.clip_embed_dim,
        mask_prompt_depth=config.clip_mask_prompt_depth,
    )
    clip_model = ClipModel(
        visual=visual,
        embed_dim=config.clip_embed_dim,
        context_length=config.clip_context_length,
        vocab_size=config.clip_vocab_size,
        width=config.clip_text_width,
        layers=config.clip_text_layers,
        heads=config.clip_text_heads,
    )
    return ClipRefiner(clip_model=clip_model)


def freeze_clip_except_mask_embedding(refiner: ClipRefiner) -> None:
    """CLIP frozen except ``visual.mask_embedding``; ``non_object_embedding`` stays trainable."""
    for name, param in refiner.clip_model.named_parameters():
        param.requires_grad_(name == "visual.mask_embedding")
    refiner.non_object_embedding.requires_grad_(True)


def load_openai_clip(refiner: ClipRefiner, path: str | Path) -> None:
    """Load OpenAI CLIP weights into ``refiner.clip_model``, strictly.

    ``path`` holds a plain state dict: safetensors, or a dict of tensors saved with ``torch.save``
    (read with ``weights_only=True``).

    Every CLIP key must be present with its shape; ``visual.mask_embedding`` (FOCUS's addition)
    keeps its initialisation when absent. OpenAI's own ``ViT-B-16.pt`` is a TorchScript archive:
    convert it once where you trust it, e.g. ``safetensors.torch.save_file({k: v.float() for k, v
    in torch.jit.load(p, map_location="cpu").state_dict().items()}, "clip_vit_b16.safetensors")``.
    Weights are copied into the existing fp32 parameters (``clip.load`` on CPU also runs fp32).
    """
    sd = {k: v for k, v in read_state_dict(path).items() if k not in _OPENAI_METADATA_KEYS}
    every = set(refiner.clip_model.state_dict())
    load_subset(refiner.clip_model, sd, every, f"CLIP weights {path}", optional=_CLIP_OPTIONAL)
