"""STDiT, the spatial-temporal diffusion transformer of Open-Sora v1.0, numerically identical to it.

    model = build_model(dict(type="STDiT-XL/2", space_scale=0.5), input_size=(16, 32, 32), in_channels=4)
    out = model(x, timestep, y, mask)  # (B, C, T, H, W), (B,), (B, 1, L, 4096), (B, L) -> (B, 2C, T, H, W)

Blocks: spatial attention within a frame, temporal attention across frames, cross-attention to the caption, MLP, all
conditioned on the timestep through one shared projection ("adaLN-single"). "v1.0:" marks a quirk of the original
kept on purpose, with the fixture in shared/fixtures/ that proves it.
Dims: B batch, T frames, S spatial tokens per frame, N = T*S, C hidden channels, L caption tokens, H heads.
"""
import inspect
import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from checkpoints import load_checkpoint
from layers import (CaptionEmbedder, CrossAttention, FinalLayer, Mlp, SelfAttention, drop_path, modulate,
                    spatial_pos_embed, temporal_pos_embed, timestep_embedding)


# ----------------------------------------------------------------------------- blocks
class STDiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), hidden_size)
        self.drop_path = drop_path
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.attn_temp = SelfAttention(hidden_size, num_heads)

    def forward(self, x, y, t0, mask, tpe=None):
        """x (B, T, S, C), y (B, L, C), t0 (B, 6C), mask (B, L) bool or None, tpe (1, T, C) or None -> (B, T, S, C)."""
        B, T, S, C = x.shape
        mod = (self.scale_shift_table[None] + t0.view(B, 6, C)).view(B, 6, 1, 1, C)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.unbind(1)  # v1.0 order, (B, 1, 1, C)
        # spatial: the S tokens of each frame attend to each other
        h = modulate(self.norm1(x), shift_msa, scale_msa).reshape(B * T, S, C)
        x = x + drop_path(gate_msa * self.attn(h).view(B, T, S, C), self.drop_path, self.training)
        # temporal: the T frames of each spatial position attend to each other. v1.0: on the raw residual stream (no
        # norm, no modulation), gated by the SPATIAL gate_msa; the temporal table goes into block 0's attention input
        # only (stdit_tiny_ref.pt). With frames split over ranks, this is the attention that parallel.py wraps.
        h = x.transpose(1, 2)  # (B, S, T, C)
        if tpe is not None:
            h = h + tpe
        h = self.attn_temp(h.reshape(B * S, T, C)).view(B, S, T, C).transpose(1, 2)
        x = x + drop_path(gate_msa * h, self.drop_path, self.training)
        # cross-attention to the caption. v1.0: raw residual stream, no norm, no gate (stdit_tiny_ref.pt)
        x = x + self.cross_attn(x.reshape(B, T * S, C), y, mask).view(B, T, S, C)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + drop_path(gate_mlp * h, self.drop_path, self.training)


# ----------------------------------------------------------------------------- model
class STDiT(nn.Module):
    """Open-Sora v1.0's STDiT: same keywords, defaults and state_dict keys.

    input_size: the latent (T, H, W) the positional buffers are made for (other sizes divisible by patch_size get
    tables computed on the fly). pred_sigma: also predict the variance values (out_channels = 2 * in_channels).
    space_scale, time_scale: positions are divided by them. dtype: inputs are cast to it (the caller casts the
    weights); the output is float32. freeze: "not_temporal" trains only the temporal attentions, "text" freezes the
    cross-attentions. Accepted, no effect: no_temporal_pos_emb (v1.0 ignores it too), enable_flashattn (`attention`
    takes flash-attn when importable), enable_layernorm_kernel (torch's LayerNorm), enable_sequence_parallelism
    (parallel.py does that work). `model.grad_checkpointing = True` recomputes each block in the backward pass, an
    int n only the first n (selective: as many as memory needs, bench.py finds the fewest).
    """

    def __init__(self, input_size=(1, 32, 32), in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1, pred_sigma=True, drop_path=0.0,
                 no_temporal_pos_emb=False, caption_channels=4096, model_max_length=120, dtype=torch.float32,
                 space_scale=1.0, time_scale=1.0, freeze=None, enable_flashattn=False, enable_layernorm_kernel=False,
                 enable_sequence_parallelism=False):
        super().__init__()
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"STDiT: hidden_size {hidden_size} must be divisible by num_heads {num_heads} and by 4")
        if freeze not in (None, "not_temporal", "text"):
            raise ValueError(f"STDiT: freeze={freeze!r}, expected None, 'not_temporal' or 'text'")
        self.input_size, self.patch_size = tuple(input_size), tuple(patch_size)
        self.in_channels, self.out_channels = in_channels, in_channels * 2 if pred_sigma else in_channels
        self.hidden_size, self.caption_channels, self.model_max_length = hidden_size, caption_channels, model_max_length
        self.space_scale, self.time_scale, self.dtype = space_scale, time_scale, dtype
        self.grad_checkpointing = False
        # sequence parallelism: parallel.enable_sequence_parallel replaces these with a split of the tokens over the
        # SP ranks (after the embedding) and the gather back (before the final layer)
        self.split_tokens, self.gather_tokens = lambda x, tpe: (x, tpe), lambda x: x
        grid = [n // p for n, p in zip(self.input_size, self.patch_size)]
        self.register_buffer("pos_embed", spatial_pos_embed(hidden_size, grid[1], grid[2], space_scale))
        self.register_buffer("pos_embed_temporal", temporal_pos_embed(hidden_size, grid[0], time_scale))

        # x_embedder and t_embedder are ModuleDicts only to keep v1.0's key names
        self.x_embedder = nn.ModuleDict(dict(proj=nn.Conv3d(in_channels, hidden_size, patch_size, stride=patch_size)))
        self.t_embedder = nn.ModuleDict(dict(mlp=nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(),
                                                               nn.Linear(hidden_size, hidden_size))))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # v1.0: float32 rates
        self.blocks = nn.ModuleList(STDiTBlock(hidden_size, num_heads, mlp_ratio, r) for r in rates)
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size) * self.out_channels)
        self.initialize_weights()
        for name, p in self.named_parameters():
            if (freeze == "not_temporal" and "attn_temp" not in name) or (freeze == "text" and "cross_attn" in name):
                p.requires_grad = False

    def initialize_weights(self):  # v1.0's init, in its order
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight  # like a Linear over the flattened patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1], self.y_embedder.y_proj.fc1,
                    self.y_embedder.y_proj.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        # the branches that start as nothing: cross-attention, the temporal attention (so a PixArt image model
        # loaded into STDiT starts out as that image model, frame by frame) and the output layer
        for lin in [b.cross_attn.proj for b in self.blocks] + [b.attn_temp.proj for b in self.blocks] + [
                self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def compile_blocks(self):
        """torch.compile each block (all share one graph, block 0 has a second with the temporal table) and the final
        layer: LayerNorm, modulation, gates and GELU fuse into a few kernels around the matmuls. train.py and
        sample.py call it on CUDA (cfg["compile"]); bench.py measures it and --check compares it with eager."""
        for block in self.blocks:
            block.compile()
        self.final_layer.compile()
        return self

    def forward(self, x, timestep, y, mask=None):
        """x (B, C_in, T, H, W), timestep (B,) float or int, y (B, 1, L, caption_channels), mask (B, L) or (B, 1, 1, L)
        or (b, L) with b dividing B (tiled: the guidance samplers pass one mask for cond and uncond rows)
        -> (B, C_out, T, H, W) float32."""
        mask = self.check_inputs(x, timestep, y, mask)
        # v1.0 casts the timestep to the model dtype too (bf16 rounds 911 to 912); int64 -> float gives the float
        # result (stdit_pipeline_ref.pt out_long_timestep)
        x, timestep, y = x.to(self.dtype), timestep.to(self.dtype), y.to(self.dtype)
        grid = [n // p for n, p in zip(x.shape[2:], self.patch_size)]  # (T', H', W') tokens
        pos, tpe = self.pos_embed, self.pos_embed_temporal
        if tuple(x.shape[2:]) != self.input_size:  # another size than the buffers': tables for this grid
            pos = spatial_pos_embed(self.hidden_size, grid[1], grid[2], self.space_scale).to(x.device, x.dtype)
            tpe = temporal_pos_embed(self.hidden_size, grid[0], self.time_scale).to(x.device, x.dtype)

        # embed
        x = self.x_embedder.proj(x).flatten(3).permute(0, 2, 3, 1) + pos  # (B, T, S, C), v1.0: same table every frame
        t = self.t_embedder.mlp(timestep_embedding(timestep).to(x.dtype))  # (B, C)
        t0 = self.t_block(t)  # (B, 6C), shared by all blocks
        y = self.y_embedder(y).squeeze(1)  # (B, L, C)
        # sequence parallel: this rank's T/sp frames (and their temporal table, for block 0) or, when the frames do not
        # divide, S/sp tokens of every frame; the attention across the split tokens goes through parallel.ulysses
        x, tpe = self.split_tokens(x, tpe)  # (B, T/sp, S, C) and (1, T/sp, C), or (B, T, S/sp, C) and (1, T, C)

        # blocks
        ckpt = len(self.blocks) if self.grad_checkpointing is True else int(self.grad_checkpointing)
        for i, block in enumerate(self.blocks):
            args = (x, y, t0, mask, tpe if i == 0 else None)
            if i < ckpt and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        # final layer
        x = self.gather_tokens(x)  # (B, T, S, C)
        x = self.final_layer(x.flatten(1, 2), t)  # (B, N, prod(patch) * C_out)
        return self.unpatchify(x, grid).float()

    def check_inputs(self, x, timestep, y, mask):
        """Clear errors for bad shapes; returns the caption mask as (B, L) bool, or None."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"STDiT: x must be (B, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        if any(n % p for n, p in zip(x.shape[2:], self.patch_size)):
            raise ValueError(f"STDiT: x's (T, H, W) {tuple(x.shape[2:])} not divisible by patch_size {self.patch_size}")
        B = x.shape[0]
        if tuple(timestep.shape) != (B,):
            raise ValueError(f"STDiT: timestep must have shape ({B},), got {tuple(timestep.shape)}")
        if y.ndim != 4 or y.shape[0] != B or y.shape[1] != 1 or y.shape[3] != self.caption_channels:
            raise ValueError(f"STDiT: y must be ({B}, 1, L, caption_channels={self.caption_channels}), "
                             f"got {tuple(y.shape)}")
        L, dropout = y.shape[2], self.training and self.y_embedder.dropout_prob > 0  # dropout: L = the null caption's
        if L > self.model_max_length or (dropout and L != self.model_max_length):
            raise ValueError(f"STDiT: caption length {L} is above model_max_length {self.model_max_length} (or, when "
                             "training with caption dropout, not equal to it)")
        if mask is None:
            return mask
        if mask.ndim == 4 and mask.shape[1:3] == (1, 1):
            mask = mask[:, 0, 0]
        if mask.ndim != 2 or mask.shape[1] != L or B % mask.shape[0]:
            raise ValueError(f"STDiT: mask must be (b, {L}) or (b, 1, 1, {L}) with b dividing the batch {B}, "
                             f"got {tuple(mask.shape)}")
        # v1.0 tiles a mask with fewer rows (stdit_pipeline_ref.pt out_repeat) and keeps tokens where mask != 0
        return mask.repeat(B // mask.shape[0], 1) != 0

    def unpatchify(self, x, grid):
        """(B, N, prod(patch) * C_out) -> (B, C_out, T, H, W). v1.0: the channel is the innermost feature index
        (stdit_tiny_ref.pt)."""
        (t, h, w), (pt, ph, pw), c = grid, self.patch_size, self.out_channels
        x = x.view(x.shape[0], t, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], c, t * pt, h * ph, w * pw)


# ----------------------------------------------------------------------------- sizes
MODELS = {"STDiT-XL/2": dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16)}


def build_model(cfg, **kwargs):
    """cfg: a config's model dict, e.g. dict(type="STDiT-XL/2", space_scale=0.5, from_pretrained=...); type "STDiT"
    takes its sizes from cfg. Values in cfg override the named size's (--model.depth=2); kwargs (input_size,
    in_channels, caption_channels, model_max_length, dtype from train.py/sample.py) override both."""
    cfg = dict(cfg)
    kind, weights = cfg.pop("type", None), cfg.pop("from_pretrained", None)
    if kind != "STDiT" and kind not in MODELS:
        raise ValueError(f"unknown model type {kind!r}; known: {', '.join([*MODELS, 'STDiT'])}")
    args = {**MODELS.get(kind, {}), **cfg, **kwargs}
    unknown = sorted(set(args) - set(inspect.signature(STDiT).parameters))
    if unknown:
        raise TypeError(f"model config: unknown keys {unknown} for {kind}")
    model = STDiT(**args)
    if weights:
        load_checkpoint(model, weights)
    return model
