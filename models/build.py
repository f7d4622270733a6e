"""Wire a ``Focus`` network from a ``FocusConfig`` (the only place that reads configs)."""

from __future__ import annotations

from models.backbone import FocusBackbone
from models.config import FocusConfig
from models.focus import Focus, FocusHead
from models.pixel_decoder import PixelDecoder
from models.transformer_decoder import MaskedTransformerDecoder


def build_focus(config: FocusConfig) -> Focus:
    backbone = FocusBackbone(
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        ffn_type=config.ffn_type,
        patch_size=config.patch_size,
        pos_grid=config.pos_grid,
        interaction_indexes=config.interaction_indexes,
        deform_num_heads=config.deform_num_heads,
        deform_points=config.deform_points,
        deform_ratio=config.deform_ratio,
        cffn_ratio=config.cffn_ratio,
        use_extra_extractor=config.use_extra_extractor,
        edge_layers=config.edge_layers,
        edge_width=config.edge_width,
        drop_path_rate=config.drop_path_rate,
    )
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
