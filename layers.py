"""The layers every architecture of the zoo shares: attention, the MLP, the timestep, caption, label and size
embedders, the final layer, and the sin-cos position tables. "v1.0:" marks a quirk of the original kept on purpose,
with the fixture in shared/fixtures/ that proves it. Dims: B batch, N tokens, C channels, L caption tokens, H heads.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import attention_kernel

try:
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # no flash-attn wheel (CPU machines): torch's scaled_dot_product_attention does the work
    flash_attn_func = flash_attn_varlen_func = None


# ----------------------------------------------------------------------------- attention
def use_flash(q):
    return flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


SHORT_KEYS = 32  # up to this many keys and no mask: attention written out (0 = never)


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D)) v per sample and head: q (B, N, H, D), k and v (B, M, H, D) -> (B, N, H, D).

    Every attention of the model goes through here (but SelfAttention's short sequences on CUDA, which
    attention_kernel.py's fused kernel takes): flash-attn when importable and the tensors are CUDA fp16/bf16, else
    torch SDPA; a short unmasked key sequence (the temporal attention over T frames) is written out instead:
    flash/cuDNN kernels tile 64-128 keys and spend most of their time on padding there (bench.py --check compares).
    mask (B, M) bool: the keys each sample may attend to. v1.0 packs each sample's kept caption tokens
    (mask != 0, any positions) under a block-diagonal mask; a key-padding mask gives the same softmax, key order does
    not matter (stdit_pipeline_ref.pt out_nonprefix). A sample with no kept key gets zeros (v1.0's empty block), no NaN.
    """
    if mask is None and k.shape[1] <= SHORT_KEYS:  # scores in fp32 like v1.0's softmax; no transposes needed
        scores = torch.einsum("bnhd,bmhd->bhnm", q, k).float() * q.shape[-1] ** -0.5  # (B, H, N, M)
        return torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1).to(v.dtype), v)
    if use_flash(q):
        if mask is None:
            return flash_attn_func(q, k, v)
        B, N, H, D = q.shape
        lens = mask.sum(1, dtype=torch.int32)  # kept keys per sample
        cu_k = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        cu_q = torch.arange(0, (B + 1) * N, N, dtype=torch.int32, device=q.device)
        out = flash_attn_varlen_func(q.reshape(B * N, H, D), k[mask], v[mask], cu_q, cu_k, N, max(int(lens.max()), 1))
        out = out.view(B, N, H, D)
    else:  # attn_mask (B, 1, 1, M) broadcast over heads and queries; an empty row is opened, zeroed below
        attn_mask = None if mask is None else (mask | ~mask.any(1, keepdim=True))[:, None, None, :]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_mask).transpose(1, 2)
    if mask is not None:
        out = torch.where(mask.any(1)[:, None, None, None], out, 0.0)
    return out


class SelfAttention(nn.Module):
    """Fused qkv Linear -> attention among the tokens along seq_dim of x, every other dim a batch -> proj.
    x (B, N, C) with seq_dim=1, or (B, T, S, C): seq_dim=2 within each frame, seq_dim=1 across the frames."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attend = attention  # parallel.py wraps this in a Ulysses all-to-all (sequence parallelism)

    def forward(self, x, seq_dim=1):
        C, H, N = x.shape[-1], self.num_heads, x.shape[seq_dim]
        if self.attend is attention and attention_kernel.fits(x, N, H):  # short, on CUDA: read in place, no copies
            return self.proj(attention_kernel.short_attention(self.qkv(x), H, seq_dim % x.ndim))
        xs = x.movedim(seq_dim, -2)  # (B, [S,] N, C)
        q, k, v = self.qkv(xs.reshape(-1, N, C)).view(-1, N, 3, H, C // H).unbind(2)  # q | k | v, (B', N, H, D)
        return self.proj(self.attend(q, k, v).reshape(xs.shape)).movedim(-2, seq_dim)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to caption tokens: x (B, N, C), y (B, L, C), mask (B, L) bool -> (B, N, C)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, y, mask):
        (B, N, C), H = x.shape, self.num_heads
        q = self.q_linear(x).view(B, N, H, C // H)
        k, v = self.kv_linear(y).view(B, y.shape[1], 2, H, C // H).unbind(2)  # k | v
        return self.proj(attention(q, k, v, mask).reshape(B, N, C))


# ----------------------------------------------------------------------------- embedders and layers
def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def drop_path(x, p, training):
    """Stochastic depth: drop a sample's whole branch with probability p, scale the kept ones by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *[1] * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


class Mlp(nn.Module):
    """Linear -> tanh-GELU -> Linear: every block's MLP and the caption projection."""

    def __init__(self, dim_in, dim_hidden, dim_out):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_hidden)
        self.fc2 = nn.Linear(dim_hidden, dim_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def timestep_embedding(t, dim=256):
    """(B,) -> (B, dim) float32 sinusoid. v1.0: [cos, sin], the reverse of the positional tables (stdit_tiny_ref.pt)."""
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))  # on the CPU as v1.0
    args = t[:, None].float() * freqs.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class CaptionEmbedder(nn.Module):
    """(B, 1, L, caption_channels) -> (B, 1, L, C); in train mode a caption is replaced by the learned null caption
    `y_embedding` with probability dropout_prob (classifier-free guidance learns from those)."""

    def __init__(self, caption_channels, hidden_size, dropout_prob, max_length):
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size)
        self.register_buffer("y_embedding", torch.randn(max_length, caption_channels) / caption_channels**0.5)
        self.dropout_prob = dropout_prob

    def forward(self, y):
        if self.training and self.dropout_prob > 0:
            # drawn from the global CPU generator like v1.0 (which then calls .cuda() on it, so it could not train on
            # the CPU). The caption's mask is kept: the null caption is masked like the prompt it replaces.
            drop = (torch.rand(y.shape[0]) < self.dropout_prob).to(y.device)
            y = torch.where(drop[:, None, None, None], self.y_embedding.to(y.dtype), y)
        return self.y_proj(y)


def embedder_mlp(dim_in, dim):
    """Linear -> SiLU -> Linear on a sinusoid, in a ModuleDict only to keep v1.0's key names (`t_embedder.mlp.0`)."""
    return nn.ModuleDict(dict(mlp=nn.Sequential(nn.Linear(dim_in, dim), nn.SiLU(), nn.Linear(dim, dim))))


def size_embedding(embedder, s, B):
    """PixArtMS's size conditioning: each number of s (b, d) (b dividing B: v1.0 tiles fewer rows) through the timestep
    sinusoid and `embedder` -> (B, d * dim), one embedding after the other (zoo_pixartms_ref.pt)."""
    s = s.reshape(len(s), -1).repeat(B // len(s), 1)
    return embedder.mlp(timestep_embedding(s.flatten()).to(embedder.mlp[0].weight.dtype)).view(B, -1)


class LabelEmbedder(nn.Module):
    """Class ids (B,) -> (B, C). With dropout_prob > 0 the table has a last row, id num_classes: the null class that
    guidance samples against and that training substitutes with probability dropout_prob (zoo_dit_label_ref.pt)."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + (dropout_prob > 0), hidden_size)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels):
        if self.training and self.dropout_prob > 0:  # the global CPU generator, as the caption dropout
            drop = (torch.rand(labels.shape[0]) < self.dropout_prob).to(labels.device)
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class FinalLayer(nn.Module):
    """LayerNorm, modulated, Linear to a patch: (B, N, C), (B, C) -> (B, N, P). PixArt/STDiT (adaln=False): shift and
    scale are its own table + t (v1.0: t, not t0); DiT/Latte (adaln=True): SiLU -> Linear of the condition c."""

    def __init__(self, hidden_size, out_features, adaln=False):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, out_features)
        if adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x, t, x_mask=None, t_cond=None):
        """x_mask (B, N, 1) bool or None: False tokens are modulated again by t_cond (PixArt/STDiT only)."""
        table = lambda t: (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # noqa: E731  (B, 1, C) each
        shift, scale = table(t) if hasattr(self, "scale_shift_table") else self.adaLN_modulation(t)[:, None].chunk(2, 2)
        x = modulate(self.norm_final(x), shift, scale)
        if x_mask is not None:  # v1.1: condition tokens go through the LayerNorm TWICE (stdit_mask_ref.pt)
            x = torch.where(x_mask, x, modulate(self.norm_final(x), *table(t_cond)))
        return self.linear(x)


# ----------------------------------------------------------------------------- positional embeddings
def sincos(pos, dim):
    """(M,) positions -> (M, dim) float64 [sin(pos w), cos(pos w)], w_k = 10000^(-k/(dim/2)), k < dim/2."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(pos, omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def spatial_pos_embed(dim, h, w, scale=1.0, base_size=None):
    """(1, h*w, dim) in token order (h, w). v1.0: the FIRST half of the channels encodes the column w, the second the
    row h, positions are float32 arange / scale, the table float64 cast to float32 (stdit_tiny_ref.pt pos_embed).
    PixArt also stretches each axis to base_size positions (float32, zoo_pixartms_ref.pt's non-square grid)."""
    rows, cols = np.arange(h, dtype=np.float32) / scale, np.arange(w, dtype=np.float32) / scale
    if base_size is not None:
        rows, cols = rows * np.float32(base_size / h), cols * np.float32(base_size / w)
    cols, rows = np.meshgrid(cols, rows)
    table = np.concatenate([sincos(cols.reshape(-1), dim // 2), sincos(rows.reshape(-1), dim // 2)], axis=1)
    return torch.from_numpy(table).float()[None]


def temporal_pos_embed(dim, t, scale):
    """(1, t, dim), frame f at position f / scale (stdit_tiny_ref.pt pos_embed_temporal)."""
    return torch.from_numpy(sincos(np.arange(t) / scale, dim)).float()[None]
