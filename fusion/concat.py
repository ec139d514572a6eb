"""Concatenation: the projected image tokens, then the projected text tokens (LLaVA-style prefix)."""
from __future__ import annotations

import torch
from torch import nn

from mmgpt.config import FusionConfig
from mmgpt.fusion.base import Fusion, ImageLayout, register_fusion


@register_fusion("concat")
class Concat(Fusion):
    """F = [I_1 .. I_Li, T_1 .. T_Lt]: the generator itself relates text and image by attention.

    Alignment: no alignment is forced; F is Li + Lt long and its mask is all ones over the image
    tokens followed by the text mask. The image tokens keep their spatial order, so the
    generator sees where things are, not only what they are.

    Several images: each image's tokens go before the text token at its slot (its `<image>` placeholder;
    all images first when the prompt has none), in image order, each token carrying its image's index
    embedding; a padded image's tokens are masked out.
    """

    reads_all_images = True

    def __init__(self, cfg: FusionConfig, text_dim: int, image_dim: int) -> None:
        super().__init__(cfg, text_dim, image_dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def combine(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor,
                images: ImageLayout | None = None) -> torch.Tensor:
        """(B, Lt, dim), (B, Lt), (B, Li, dim) -> (B, Li + Lt, dim)."""
        return self.norm(image_prefix(text, text_mask, image, images))

    def fused_mask(self, text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None = None
                   ) -> torch.Tensor:
        """(B, Lt), (B, Li, dim) -> (B, Li + Lt): every image token is valid (of several, every real image's)."""
        return image_prefix_mask(text_mask, image, images)

    def image_token_positions(self, text_mask: torch.Tensor, images: ImageLayout) -> torch.Tensor:
        """(B, K * Li): the position in F of each image token of I, in I's order."""
        return image_prefix_positions(text_mask, images)


def image_prefix(text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None
                 ) -> torch.Tensor:
    """(B, Lt, dim), (B, Lt), (B, Li, dim) -> [I, T] (B, Li + Lt, dim), each image before its slot's text token."""
    fused = torch.cat([image, text * text_mask.unsqueeze(-1).to(text.dtype)], dim=1)
    if images is not None:
        fused = fused.gather(1, _order(text_mask, images).unsqueeze(-1).expand_as(fused))
    return fused


def image_prefix_mask(text_mask: torch.Tensor, image: torch.Tensor, images: ImageLayout | None) -> torch.Tensor:
    """The mask (B, Li + Lt) of `image_prefix`'s output: the real images' tokens, then the text mask."""
    if images is None:
        image_mask = torch.ones(image.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        return torch.cat([image_mask, text_mask], dim=1)
    mask = torch.cat([images.token_mask().to(text_mask.dtype), text_mask], dim=1)
    return mask.gather(1, _order(text_mask, images))


def image_prefix_positions(text_mask: torch.Tensor, images: ImageLayout) -> torch.Tensor:
    """(B, K * Li): the position in `image_prefix`'s output of each image token of I, in I's order."""
    return torch.argsort(_order(text_mask, images), dim=1)[:, : images.count * images.tokens_per_image]


def _order(text_mask: torch.Tensor, images: ImageLayout) -> torch.Tensor:
    """(B, K * Li + Lt): where each position of [images' tokens, text] goes so each image sits at its slot."""
    count, per = images.count, images.tokens_per_image
    text_key = (2 * torch.arange(text_mask.shape[1], device=text_mask.device) + 1) * (count * per)
    # image k's tokens sort just before text token slots[k], in image then token order; padding goes last
    token = torch.arange(count * per, device=text_mask.device)
    image_key = 2 * images.slots.repeat_interleave(per, dim=1) * (count * per) + token
    # every key distinct (padding after everything, in token order), so any sort gives this one order: ONNX
    # has no stable sort
    last = (2 * text_mask.shape[1] + 2) * (count * per)
    image_key = torch.where(images.token_mask() == 0, last + token, image_key)
    keys = torch.cat([image_key, text_key.expand(text_mask.shape[0], -1)], dim=1)
    return torch.argsort(keys, dim=1)
