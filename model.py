"""The diffusion transformers of Open-Sora v1.0, numerically identical to it: STDiT, PixArt, PixArtMS, DiT, Latte.

    model = build_model(dict(type="STDiT-XL/2", space_scale=0.5), input_size=(16, 32, 32), in_channels=4)
    out = model(x, timestep, y, mask)  # (B, C, T, H, W), (B,), (B, 1, L, 4096), (B, L) -> (B, 2C, T, H, W)

All five cut the latent video into T*S patch tokens, run a stack of blocks conditioned on the timestep and the
caption (or class), and reassemble the patches into noise and variance. They differ in which tokens attend to which
and in how the condition enters:

    PixArt    all T*S tokens of a sample attend to each other, then to the caption's T5 tokens (cross-attention);
              every block is modulated by one shared projection of the timestep ("adaLN-single")
    PixArtMS  PixArt + the image's size and aspect ratio added to the timestep embedding
    STDiT     PixArt's blocks with the self-attention split: within each frame, then across the frames
    DiT       all T*S tokens attend to each other; c = timestep + pooled CLIP caption or class, projected by every
              block for itself ("adaLN-Zero"); no cross-attention
    Latte     DiT's blocks, alternately within each frame (even blocks) and across the frames (odd blocks)

"v1.0:" marks a quirk of the original kept on purpose, with the fixture in shared/fixtures/ that proves it.
Dims: B batch, T frames, S spatial tokens per frame, N = T*S, C hidden channels, L caption tokens, H heads.
"""
import inspect
import math
import re
from functools import partial

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from checkpoints import load_checkpoint
from errors import pick
from stepcache import branch
from layers import (CaptionEmbedder, CrossAttention, FinalLayer, LabelEmbedder, Mlp, SelfAttention, drop_path,
                    embedder_mlp, modulate, size_embedding, spatial_pos_embed, temporal_pos_embed, timestep_embedding)


# ----------------------------------------------------------------------------- blocks
def self_attend(attn, x, over):
    """attn among the tokens of x (B, T, S, C): "space" those of each frame, "time" the frames of each spatial position,
    "all" every token of a sample -> (B, T, S, C)."""
    if over == "all":
        return attn(x.flatten(1, 2)).view(x.shape)
    return attn(x, seq_dim=1 if over == "time" else 2)


class STDiTBlock(nn.Module):
    """PixArt's block (temporal=False: self-attention over all tokens) or STDiT's (temporal=True: within each frame,
    then across the frames). Modulated by t0 plus the block's own table (adaLN-single)."""
    step_cache = None  # while sampling with a cache: stepcache.attached() sets one (branch() reads it)

    def __init__(self, hidden_size, num_heads, mlp_ratio, drop_path, temporal):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), hidden_size)
        self.drop_path = drop_path
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.attn_temp = SelfAttention(hidden_size, num_heads) if temporal else None

    def modulation(self, t0):
        """t0 (B, 6C) -> shift, scale, gate of the attention, shift, scale, gate of the MLP (v1.0 order), (B, 1, 1, C)."""
        return (self.scale_shift_table[None] + t0.view(len(t0), 6, -1))[:, :, None, None].unbind(1)

    def forward(self, x, y, t0, mask, tpe=None, x_mask=None, t0_cond=None):
        """x (B, T, S, C), y (B, L, C), t0 (B, 6C), mask (B, L) bool or None, tpe (1, T, C) or None, x_mask (B, T) bool
        (False: a condition frame, modulated by t0_cond (B, 6C) instead) or None -> (B, T, S, C).
        Each attention goes through stepcache.branch: itself, or under a cache its output of an earlier step."""
        B, T, S, C = x.shape
        mod = self.modulation(t0)
        gate_temp = mod[2]  # v1.1: the temporal branch keeps the t gate on condition frames too (stdit_mask_ref.pt)
        if x_mask is not None:  # v1.1: each of the six chosen per frame, t or t0_cond: (B, T, 1, C)
            mod = [torch.where(x_mask.view(B, T, 1, 1), a, b) for a, b in zip(mod, self.modulation(t0_cond))]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod  # (B, 1|T, 1, C)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        h = branch(self, "spatial", self_attend, self.attn, h, "space" if self.attn_temp else "all")
        x = x + drop_path(gate_msa * h, self.drop_path, self.training)
        if self.attn_temp:
            # temporal. v1.0: on the raw residual stream (no norm, no modulation), gated by the SPATIAL gate_msa; the
            # temporal table goes into block 0's attention input only (stdit_tiny_ref.pt). With frames split over
            # ranks, this is the attention that parallel.py wraps.
            h = branch(self, "temporal", self_attend, self.attn_temp, x if tpe is None else x + tpe[:, :, None], "time")
            x = x + drop_path(gate_temp * h, self.drop_path, self.training)
        # cross-attention to the caption. v1.0: raw residual stream, no norm, no gate (stdit_tiny_ref.pt)
        x = x + branch(self, "cross", self.cross_attn, x.reshape(B, T * S, C), y, mask).view(B, T, S, C)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + drop_path(gate_mlp * h, self.drop_path, self.training)


class DiTBlock(nn.Module):
    """adaLN-Zero: self-attention and MLP, each modulated and gated by the block's own projection of c."""

    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c, over):
        """x (B, T, S, C), c (B, C), over "all", "space" or "time" (see self_attend) -> (B, T, S, C)."""
        # (B, 1, 1, C) each. v1.0 computes them per frame or position (Latte): the same rows
        mod = self.adaLN_modulation(c).view(len(c), 6, 1, 1, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(1)
        x = x + gate_msa * self_attend(self.attn, modulate(self.norm1(x), shift_msa, scale_msa), over)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


# ----------------------------------------------------------------------------- what every model shares
class Backbone(nn.Module):
    """Patch embedding, timestep embedding, the block loop with gradient checkpointing, final layer and unpatchify.
    Subclasses build their other modules in v1.0's order (its state_dict order) and write forward()."""

    def __init__(self, input_size, in_channels, patch_size, hidden_size, num_heads, sigma, dtype):
        """sigma: the model predicts the variance too (out_channels = 2 * in_channels)."""
        super().__init__()
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"{type(self).__name__}: hidden_size {hidden_size} must be divisible by num_heads "
                             f"{num_heads} and by 4")
        self.input_size, self.patch_size = tuple(input_size), tuple(patch_size)
        self.in_channels, self.out_channels = in_channels, in_channels * (1 + sigma)
        self.hidden_size, self.dtype = hidden_size, dtype
        self.grid_size = tuple(n // p for n, p in zip(self.input_size, self.patch_size))  # (T', H', W') tokens
        # `model.grad_checkpointing = True` recomputes each block in the backward pass, an int n only the first n
        # (selective: as many as memory needs, bench.py finds the fewest)
        self.grad_checkpointing = False
        self.x_embedder = nn.ModuleDict(dict(proj=nn.Conv3d(in_channels, hidden_size, patch_size, stride=patch_size)))

    def initialize_weights(self, normal, zero):
        """v1.0's init, in its order: xavier-uniform Linears (bias 0) and patch kernel, N(0, 0.02) for the timestep
        MLP then `normal`, zeros for `zero` and the final Linear (the branches that start as nothing)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight  # like a Linear over the flattened patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for lin in [self.t_embedder.mlp[0], self.t_embedder.mlp[2], *normal]:
            nn.init.normal_(lin.weight, std=0.02)
        for lin in [*zero, self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def compile_blocks(self):
        """torch.compile each block (they share one graph) and the final layer: LayerNorm, modulation, gates and GELU
        fuse into a few kernels around the matmuls. train.py and sample.py call it on CUDA (cfg["compile"]); bench.py
        measures it and --check compares it with eager."""
        for block in self.blocks:
            block.compile()
        self.final_layer.compile()

    def check_x(self, x, timestep):
        """Clear errors for bad shapes; returns the token grid (T', H', W') of x."""
        name = type(self).__name__
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: x must be (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        if any(n % p for n, p in zip(x.shape[2:], self.patch_size)):
            raise ValueError(f"{name}: x's (T, H, W) {tuple(x.shape[2:])} not divisible by patch_size {self.patch_size}")
        if tuple(timestep.shape) != (x.shape[0],):
            raise ValueError(f"{name}: timestep must have shape ({x.shape[0]},), got {tuple(timestep.shape)}")
        return tuple(n // p for n, p in zip(x.shape[2:], self.patch_size))

    def embed(self, x):
        """Patches (B, C_in, T, H, W) -> tokens (B, T', S, C), in (T, H, W) order."""
        return self.x_embedder.proj(x).flatten(3).permute(0, 2, 3, 1)

    def block(self, i, *args):
        """Block i on args, recomputed in the backward pass when grad_checkpointing says so."""
        n = len(self.blocks) if self.grad_checkpointing is True else int(self.grad_checkpointing)
        if i < n and torch.is_grad_enabled():
            return checkpoint(self.blocks[i], *args, use_reentrant=False)
        return self.blocks[i](*args)

    def head(self, x, t, grid, x_mask=None, t_cond=None):
        """Final layer and unpatchify: (B, T', S, C) -> (B, C_out, T, H, W) float32. v1.0: the channel is the innermost
        feature of a patch (stdit_tiny_ref.pt). x_mask (B, T'): False frames take t_cond's modulation."""
        x_mask = None if x_mask is None else x_mask.repeat_interleave(x.shape[2], 1)[..., None]  # (B, N, 1)
        x = self.final_layer(x.flatten(1, 2), t, x_mask, t_cond)  # (B, N, prod(patch) * C_out)
        (T, H, W), (pt, ph, pw), c = grid, self.patch_size, self.out_channels
        x = x.view(x.shape[0], T, H, W, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], c, T * pt, H * ph, W * pw).float()


# ----------------------------------------------------------------------------- PixArt, PixArtMS, STDiT
class PixArt(Backbone):
    """Open-Sora v1.0's PixArt (PixArt-alpha made 3D): same keywords, defaults and state_dict keys; STDiT below too.

    input_size: the latent (T, H, W) the position buffers are made for (other sizes divisible by patch_size get tables
    computed on the fly). pred_sigma: also predict the variance values (out_channels = 2 * in_channels). space_scale,
    time_scale: positions are divided by them. no_temporal_pos_emb: PixArt adds no temporal table (STDiT ignores the
    flag, as v1.0). dtype: inputs are cast to it (the caller casts the weights); the output is float32. freeze: "text"
    freezes the cross-attentions, "not_temporal" (STDiT) trains only the temporal attentions. Accepted, no effect:
    enable_flashattn (`attention` takes flash-attn when importable), enable_layernorm_kernel (torch's LayerNorm),
    enable_sequence_parallelism (parallel.py does that work; v1.0's PixArt refuses the keyword).
    """
    temporal = False  # STDiT: the blocks attend across frames too
    multi_scale = False  # PixArtMS: size and aspect-ratio conditioning
    step_cache = None  # while sampling with a cache: stepcache.attached() sets one

    def __init__(self, input_size=(1, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0,
                 no_temporal_pos_emb=False, caption_channels=4096, model_max_length=120, dtype=torch.float32,
                 space_scale=1.0, time_scale=1.0, freeze=None, enable_flashattn=False, enable_layernorm_kernel=False,
                 enable_sequence_parallelism=False):
        if freeze not in (None, "text", "not_temporal") or (freeze == "not_temporal" and not self.temporal):
            raise ValueError(f"{type(self).__name__}: freeze={freeze!r}, expected None, 'text'"
                             + " or 'not_temporal'" * self.temporal)
        super().__init__(input_size, in_channels, patch_size, hidden_size, num_heads, pred_sigma, dtype)
        self.caption_channels, self.model_max_length = caption_channels, model_max_length
        self.space_scale, self.time_scale, self.no_temporal_pos_emb = space_scale, time_scale, no_temporal_pos_emb
        # sequence parallelism: parallel.enable_sequence_parallel replaces these with a split of the tokens over the
        # SP ranks (after the embedding) and the gather back (before the final layer)
        self.split_tokens, self.gather_tokens = lambda x, tpe: (x, tpe), lambda x: x
        # v1.0: PixArt stretches both axes of its grid to int(sqrt(H' W')) positions (pixart.py); STDiT does not
        self.base_size = base_size = None if self.temporal else int(math.sqrt(self.grid_size[1] * self.grid_size[2]))
        self.register_buffer("pos_embed", spatial_pos_embed(hidden_size, *self.grid_size[1:], space_scale, base_size))
        self.register_buffer("pos_embed_temporal", temporal_pos_embed(hidden_size, self.grid_size[0], time_scale))

        self.t_embedder = embedder_mlp(256, hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # v1.0: float32 rates
        self.blocks = nn.ModuleList(STDiTBlock(hidden_size, num_heads, mlp_ratio, r, self.temporal) for r in rates)
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size) * self.out_channels)
        # the branches that start as nothing: cross-attention, the temporal attention (so a PixArt image model loaded
        # into STDiT starts out as that image model, frame by frame) and the output layer
        self.initialize_weights(
            [self.t_block[1], self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2],
            [b.cross_attn.proj for b in self.blocks] + [b.attn_temp.proj for b in self.blocks if b.attn_temp])
        if self.multi_scale:  # each embeds one number in hidden/3 channels: height, width, aspect ratio (v1.0 adds
            if hidden_size % 3:  # them after the init above: torch's default init)
                raise ValueError(f"PixArtMS: hidden_size {hidden_size} must be divisible by 3")
            self.csize_embedder, self.ar_embedder = embedder_mlp(256, hidden_size // 3), embedder_mlp(256, hidden_size // 3)
        for name, p in self.named_parameters():
            if (freeze == "not_temporal" and "attn_temp" not in name) or (freeze == "text" and "cross_attn" in name):
                p.requires_grad = False

    def forward(self, x, timestep, y, mask=None, data_info=None, x_mask=None):
        """x (B, C_in, T, H, W), timestep (B,) float or int, y (B, 1, L, caption_channels), mask (B, L) or (B, 1, 1, L)
        or (b, L) with b dividing B (tiled: the guidance samplers pass one mask for cond and uncond rows), data_info
        (PixArtMS only) dict(hw=(b, 2) height and width in pixels, ar=(b, 1) height / width), x_mask (B, T') bool over
        the model's frames, False = a given (condition) frame, as v1.1 (None: v1.0's forward) -> (B, C_out, T, H, W)."""
        grid, mask = self.check_x(x, timestep), self.check_caption(x, y, mask, data_info)
        # v1.0 casts the timestep to the model dtype too (bf16 rounds 911 to 912); int64 -> float gives the float
        # result (stdit_pipeline_ref.pt out_long_timestep)
        x, timestep, y = x.to(self.dtype), timestep.to(self.dtype), y.to(self.dtype)
        pos, tpe = self.pos_embed, self.pos_embed_temporal
        if grid != self.grid_size:  # another size than the buffers': tables for this grid
            pos = spatial_pos_embed(self.hidden_size, *grid[1:], self.space_scale, self.base_size).to(x.device, x.dtype)
            tpe = temporal_pos_embed(self.hidden_size, grid[0], self.time_scale).to(x.device, x.dtype)

        # embed. v1.0: the same spatial table in every frame; PixArt adds the temporal one to the tokens (unless
        # no_temporal_pos_emb), STDiT hands it to block 0's temporal attention (zoo_pixart_ref.pt, stdit_tiny_ref.pt)
        x = self.embed(x) + pos  # (B, T, S, C)
        if not self.temporal and not self.no_temporal_pos_emb:
            x = x + tpe[:, :, None]
        # v1.1: condition frames (x_mask False) are modulated by the embedding of timestep 0 (stdit_mask_ref.pt)
        embed_t = lambda s: self.t_embedder.mlp(timestep_embedding(s).to(x.dtype))  # noqa: E731  (B,) -> (B, C)
        t, t_cond = embed_t(timestep), None if x_mask is None else embed_t(0 * timestep)
        if self.multi_scale:  # v1.0: this t feeds t_block AND the final layer (zoo_pixartms_ref.pt)
            size = torch.cat([size_embedding(self.csize_embedder, data_info["hw"], len(x)),
                              size_embedding(self.ar_embedder, data_info["ar"], len(x))], dim=1)
            t, t_cond = t + size, None if x_mask is None else t_cond + size
        t0, t0_cond = self.t_block(t), None if x_mask is None else self.t_block(t_cond)  # (B, 6C), shared by all blocks
        y = self.y_embedder(y).squeeze(1)  # (B, L, C)
        # sequence parallel: this rank's T/sp frames (and their temporal table, for block 0) or, when the frames do not
        # divide, S/sp tokens of every frame; the attention across the split tokens goes through parallel.ulysses
        # a step cache decides on all tokens, before the split (so every rank alike): skip the blocks (TeaCache)?
        skip = self.step_cache is not None and self.step_cache.begin(self.blocks[0], x, t0)
        x_in, tpe = self.split_tokens(x, tpe)  # (B, T/sp, S, C) and (1, T/sp, C), or (B, T, S/sp, C) and (1, T, C)
        x = x_in
        for i in range(0 if skip else len(self.blocks)):
            x = self.block(i, x, y, t0, mask, tpe if i == 0 and self.temporal else None, x_mask, t0_cond)
        if self.step_cache is not None:
            x = self.step_cache.blocks_out(x_in, x, skip)
        return self.head(self.gather_tokens(x), t, grid, x_mask, t_cond)

    def check_caption(self, x, y, mask, data_info):
        """Clear errors for bad captions; returns the caption mask as (B, L) bool, or None."""
        B, name = len(x), type(self).__name__
        if y.ndim != 4 or y.shape[0] != B or y.shape[1] != 1 or y.shape[3] != self.caption_channels:
            raise ValueError(f"{name}: y must be ({B}, 1, L, caption_channels={self.caption_channels}), "
                             f"got {tuple(y.shape)}")
        L, dropout = y.shape[2], self.training and self.y_embedder.dropout_prob > 0  # dropout: L = the null caption's
        if L > self.model_max_length or (dropout and L != self.model_max_length):
            raise ValueError(f"{name}: caption length {L} is above model_max_length {self.model_max_length} (or, when "
                             "training with caption dropout, not equal to it)")
        if self.multi_scale != (data_info is not None):
            raise ValueError(f"{name}: data_info (hw, ar) is needed by PixArtMS and taken by no other model")
        if mask is None:
            return mask
        if mask.ndim == 4 and mask.shape[1:3] == (1, 1):
            mask = mask[:, 0, 0]
        if mask.ndim != 2 or mask.shape[1] != L or B % mask.shape[0]:
            raise ValueError(f"{name}: mask must be (b, {L}) or (b, 1, 1, {L}) with b dividing the batch {B}, "
                             f"got {tuple(mask.shape)}")
        # v1.0 tiles a mask with fewer rows (stdit_pipeline_ref.pt out_repeat) and keeps tokens where mask != 0
        return mask.repeat(B // mask.shape[0], 1) != 0


class PixArtMS(PixArt):
    """PixArt-XL-2-1024-MS: the timestep embedding plus the embedded image size (height, width in pixels) and aspect
    ratio (data_info; v1.0's `multi_resolution` configs pass them)."""
    multi_scale = True

    @staticmethod
    def data_info(image_size, device=None, dtype=None):
        """What v1.0's inference passes for images of image_size (H, W) pixels: one row, tiled by the model."""
        (H, W), row = image_size, lambda v: torch.tensor([v], device=device, dtype=dtype)
        return dict(hw=row([H, W]), ar=row([H / W]))


class STDiT(PixArt):
    """Open-Sora v1.0's STDiT: PixArt whose blocks attend within each frame and then across the frames."""
    temporal = True


# ----------------------------------------------------------------------------- DiT, Latte
class DiT(Backbone):
    """Open-Sora v1.0's DiT (Meta's DiT made 3D): same keywords, defaults and state_dict keys; Latte below too.

    condition: "text" (a pooled CLIP caption (B, 1, 1, caption_channels)) or "label_K" (class ids (B,), K classes,
    plus the null class K when class_dropout_prob > 0). learn_sigma: out_channels = 2 * in_channels. model_max_length:
    accepted, unused (v1.0 too). Other sizes than input_size get position tables computed on the fly (v1.0 runs only
    the size it was built for, and only square latents).
    """
    alternating = False  # Latte: spatial and temporal blocks in turn

    def __init__(self, input_size=(16, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, learn_sigma=True, condition="text",
                 no_temporal_pos_emb=False, caption_channels=512, model_max_length=77, dtype=torch.float32,
                 enable_flashattn=False, enable_layernorm_kernel=False):
        if condition != "text" and not re.fullmatch(r"label_\d+", str(condition)):
            raise ValueError(f"{type(self).__name__}: condition={condition!r}, expected 'text' or 'label_K' (K classes)")
        super().__init__(input_size, in_channels, patch_size, hidden_size, num_heads, learn_sigma, dtype)
        self.num_classes = None if condition == "text" else int(condition.split("_")[1])
        self.caption_channels, self.no_temporal_pos_emb = caption_channels, no_temporal_pos_emb
        self.register_buffer("pos_embed_spatial", spatial_pos_embed(hidden_size, *self.grid_size[1:]))
        self.register_buffer("pos_embed_temporal", temporal_pos_embed(hidden_size, self.grid_size[0], 1.0))

        if self.num_classes is None:  # v1.0: the caption embedder for one pooled token
            self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, 1)
        else:
            self.y_embedder = LabelEmbedder(self.num_classes, hidden_size, class_dropout_prob)
        self.t_embedder = embedder_mlp(256, hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size) * self.out_channels, adaln=True)
        caption = [self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2] if self.num_classes is None else []
        self.initialize_weights(caption, [b.adaLN_modulation[1] for b in [*self.blocks, self.final_layer]])
        nn.init.zeros_(self.x_embedder.proj.bias)

    def forward(self, x, timestep, y):
        """x (B, C_in, T, H, W), timestep (B,) float or int, y class ids (B,) or pooled captions (B, 1, 1, C_caption)
        -> (B, C_out, T, H, W) float32."""
        grid, B = self.check_x(x, timestep), len(x)
        if self.num_classes is None and y.shape != (B, 1, 1, self.caption_channels):
            raise ValueError(f"{type(self).__name__}: y must be pooled captions ({B}, 1, 1, {self.caption_channels})"
                             f", got {tuple(y.shape)}")
        rows = self.y_embedder.embedding_table.num_embeddings if self.num_classes is not None else 0
        if rows and (y.shape != (B,) or y.is_floating_point() or y.min() < 0 or y.max() >= rows):
            raise ValueError(f"{type(self).__name__}: y must be {B} class ids in [0, {rows}), got {y.tolist()}")
        # v1.0 casts x only, so its text models fail in fp16/bf16; the caption is cast here. The timestep embedding is
        # computed from the uncast timestep (unlike PixArt)
        x, y = x.to(self.dtype), y.to(self.dtype) if y.is_floating_point() else y
        pos, tpe = self.pos_embed_spatial, self.pos_embed_temporal
        if grid != self.grid_size:
            pos = spatial_pos_embed(self.hidden_size, *grid[1:]).to(x.device, x.dtype)
            tpe = temporal_pos_embed(self.hidden_size, grid[0], 1.0).to(x.device, x.dtype)

        x = self.embed(x) + pos  # (B, T, S, C)
        if not self.alternating and not self.no_temporal_pos_emb:  # v1.0: Latte ignores the flag (below)
            x = x + tpe[:, :, None]
        t = self.t_embedder.mlp(timestep_embedding(timestep).to(x.dtype))
        c = t + self.y_embedder(y).view(B, -1)  # (B, C)
        for i in range(len(self.blocks)):
            if self.alternating and i == 1:  # v1.0: Latte adds the temporal table to the residual stream before its
                x = x + tpe[:, :, None]  # first temporal block, once (zoo_latte_ref.pt)
            x = self.block(i, x, c, ("space", "time")[i % 2] if self.alternating else "all")
        return self.head(x, c, grid)


class Latte(DiT):
    """Open-Sora v1.0's Latte: DiT's blocks alternately within each frame (even) and across the frames (odd)."""
    alternating = True


# ----------------------------------------------------------------------------- sizes
XL2 = dict(depth=28, hidden_size=1152, num_heads=16, patch_size=(1, 2, 2))
XL2x2 = dict(XL2, patch_size=(2, 2, 2))
MODELS = {  # a config's model type -> its constructor, the sizes the name fixes (a class name: sizes from the config)
    "STDiT-XL/2": partial(STDiT, **XL2), "PixArt-XL/2": partial(PixArt, **XL2), "PixArtMS-XL/2": partial(PixArtMS, **XL2),
    "DiT-XL/2": partial(DiT, **XL2), "DiT-XL/2x2": partial(DiT, **XL2x2), "Latte-XL/2": partial(Latte, **XL2),
    "Latte-XL/2x2": partial(Latte, **XL2x2), **{cls.__name__: cls for cls in (STDiT, PixArt, PixArtMS, DiT, Latte)}}


def model_class(cfg):
    """The class of a config's model dict (checked: a known type, keywords of it)."""
    make = pick(MODELS, "model", cfg, extra=("from_pretrained",))
    return getattr(make, "func", make)


def model_setting(cfg, key):
    """The value `key` (patch_size, num_heads, ...) takes in the model cfg builds: cfg's, else its size's or default."""
    return cfg[key] if key in cfg else inspect.signature(MODELS[cfg["type"]]).parameters[key].default


def build_model(cfg, **kwargs):
    """cfg: a config's model dict, e.g. dict(type="STDiT-XL/2", space_scale=0.5, from_pretrained=...). Values in cfg
    override the named size's (--model.depth=2); kwargs (input_size, in_channels, caption_channels, model_max_length,
    dtype from train.py/sample.py) override both."""
    make = pick(MODELS, "model", cfg, extra=("from_pretrained",))
    model = make(**{k: v for k, v in cfg.items() if k not in ("type", "from_pretrained")} | kwargs)
    if cfg.get("from_pretrained"):
        load_checkpoint(model, cfg["from_pretrained"])
    return model
