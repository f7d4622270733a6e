"""Wire a ``Focus`` network from a ``FocusConfig`` (the only place that reads configs)."""

from __future__ import annotations

from torch import nn

from models.adapter import InteractionBlock
from models.backbone import FocusBackbone
from models.config import FocusConfig
from models.edge import EdgePriorModule
from models.focus import Focus, FocusHead
from models.pixel_decoder import PixelDecoder
from models.transformer_decoder import MaskedTransformerDecoder
from models.vit import Block, PatchEmbed


def build_backbone(config: FocusConfig) -> FocusBackbone:
    """The ViT, edge prior and adapter parts, then the backbone that composes them.

    Built in the order the parameters draw from the RNG (patch embedding, blocks, edge prior,
    interactions), so a seeded build is the same network as before this split.
    """
    d, depth = config.embed_dim, config.depth
    rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # 0 -> rate
    patch_embed = PatchEmbed(config.patch_size, d)
    blocks = nn.Sequential(
        *(Block(d, config.num_heads, config.mlp_ratio, config.ffn_type, r) for r in rates)
    )
    edge = EdgePriorModule(d, config.edge_layers, config.edge_width)
    last = len(config.interaction_indexes) - 1
    interactions = nn.Sequential(
        *(
            InteractionBlock(
                d,
                config.deform_num_heads,
                config.deform_points,
                config.deform_ratio,
                config.cffn_ratio,
                config.drop_path_rate,
                extra_extractor=config.use_extra_extractor and i == last,
            )
            for i in range(len(config.interaction_indexes))
        )
    )
    return FocusBackbone(
        patch_embed=patch_embed,
        blocks=blocks,
        edge=edge,
        interactions=interactions,
        interaction_indexes=config.interaction_indexes,
        embed_dim=d,
        pos_grid=config.pos_grid,
    )


def build_focus(config: FocusConfig) -> Focus:
    backbone = build_backbone(config)
    pixel_decoder = PixelDecoder(
        in_dim=config.embed_dim,
        conv_dim=config.conv_dim,
        mask_dim=config.mask_dim,
        enc_layers=config.enc_layers,
        enc_heads=config.enc_heads,
        enc_points=config.enc_points,
        enc_ffn_dim=config.enc_ffn_dim,
        norm_groups=config.norm_groups,
    )
    clip_refiner = text_embed = image_embed = None
    if config.with_clip:
        from models.clip import ProjectionHead, build_clip_refiner

        clip_refiner = build_clip_refiner(config)
        text_embed = ProjectionHead(config.clip_embed_dim, config.clip_embed_dim)
        image_embed = ProjectionHead(config.clip_embed_dim, config.clip_embed_dim)
    predictor = MaskedTransformerDecoder(
        hidden_dim=config.hidden_dim,
        num_queries=config.num_queries,
        nheads=config.dec_heads,
        dim_feedforward=config.dec_ffn_dim,
        dec_layers=config.dec_layers,
        mask_dim=config.mask_dim,
        num_classes=config.num_classes,
        clip_refiner=clip_refiner,
        text_embed=text_embed,
        image_embed=image_embed,
    )
    return Focus(
        backbone=backbone, sem_seg_head=FocusHead(pixel_decoder=pixel_decoder, predictor=predictor)
    )
