"""One fused Triton kernel: attention over a short sequence read in place, STDiT's temporal attention.

    out = short_attention(qkv, heads, seq_dim)  # qkv (B, T, S, 3C) or (B, N, 3C) -> (B, T, S, C) or (B, N, C)

The temporal attention of STDiT and Latte mixes the T frames of each spatial position: x is (B, T, S, C) and the
sequence is dim 1. Through SDPA that costs a transpose of x to (B, S, T, C) and back, then the kernel's own layout
copies, and flash/cuDNN tile 64-128 keys, so 16 frames are mostly padding. Here one program takes one (b1, b2, head):
it loads that head's q, k, v of the N frames straight from the qkv Linear's (B, T, S, 3C) output, strided,
computes the N x N softmax in registers and writes out in the same (B, T, S, C) memory order, ready for proj. The
backward recomputes the scores (nothing is saved but qkv) and writes dq, dk, dv into one tensor shaped like qkv.
Why our own: flash-attn, cuDNN and FlexAttention all want (B, H, N, D) or (B, N, H, D) batches with one batch
stride, and pad short sequences to their tile; no library kernel takes a two-strided batch.
Optional: without triton (CPU machines) layers.SelfAttention takes the written-out path; bench.py --check compares.
(Not named kernels.py: transformers imports a top-level `kernels` module, Hugging Face's package, when it finds one.)
"""
import math

import torch

try:
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton
except ImportError:  # CPU-only torch has no triton: the kernel is never used
    triton = None

MAX_KEYS = 64  # longest sequence the kernel takes (its scores live in registers); 0 = never (bench.py's plain path)


def fits(x, n, heads):
    """Whether SelfAttention may send x (B, ..., C) with n tokens per sequence to the kernel."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and x.ndim in (3, 4)
            and n <= MAX_KEYS and x.shape[-1] // heads <= 256)


if triton is not None:
    @triton.jit
    def _offsets(t1, t2, tn, B2, W: tl.constexpr, N: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
        """This program's (b1, b2, head): the element offsets (BLOCK_N, BLOCK_D) of its N tokens' head slice in a
        tensor of W channels per token (t1, t2, tn: token strides of the two batch dims and the sequence), and the
        mask of the real ones."""
        h, b = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
        n, d = tl.arange(0, BLOCK_N).to(tl.int64), tl.arange(0, BLOCK_D).to(tl.int64)
        token = (b // B2) * t1 + (b % B2) * t2 + n[:, None] * tn
        return token * W + h * D + d[None, :], (n[:, None] < N) & (d[None, :] < D)

    @triton.jit
    def _load_qkv(qkv, i, inside, C: tl.constexpr):
        """q, k, v of this program's head: at +0, +C, +2C of each token's 3C channels; zero outside."""
        q = tl.load(qkv + i, mask=inside, other=0.0)
        k = tl.load(qkv + i + C, mask=inside, other=0.0)
        v = tl.load(qkv + i + 2 * C, mask=inside, other=0.0)
        return q, k, v

    @triton.jit
    def _softmax(q, k, N: tl.constexpr, BLOCK_N: tl.constexpr, scale):
        """softmax(q k^T * scale) over the N real keys, float32 (v1.0's softmax precision) (BLOCK_N, BLOCK_N)."""
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(tl.arange(0, BLOCK_N)[None, :] < N, s, float("-inf"))
        p = tl.exp(s - tl.max(s, 1)[:, None])
        return p / tl.sum(p, 1)[:, None]

    @triton.jit
    def _short_fwd(qkv, out, t1, t2, tn, B2, scale, C: tl.constexpr, N: tl.constexpr, D: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        i, inside = _offsets(t1, t2, tn, B2, 3 * C, N, D, BLOCK_N, BLOCK_D)
        q, k, v = _load_qkv(qkv, i, inside, C)
        o = tl.dot(_softmax(q, k, N, BLOCK_N, scale).to(v.dtype), v)
        i, inside = _offsets(t1, t2, tn, B2, C, N, D, BLOCK_N, BLOCK_D)
        tl.store(out + i, o.to(out.dtype.element_ty), mask=inside)

    @triton.jit
    def _short_bwd(qkv, dout, dqkv, t1, t2, tn, B2, scale, C: tl.constexpr, N: tl.constexpr, D: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        i, inside = _offsets(t1, t2, tn, B2, 3 * C, N, D, BLOCK_N, BLOCK_D)
        q, k, v = _load_qkv(qkv, i, inside, C)
        io, _ = _offsets(t1, t2, tn, B2, C, N, D, BLOCK_N, BLOCK_D)
        do = tl.load(dout + io, mask=inside, other=0.0)
        p = _softmax(q, k, N, BLOCK_N, scale)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do)  # padded rows of do are 0, padded keys have p = 0
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - tl.sum(p * dp, 1)[:, None])  # softmax backward, per row
        dq = tl.dot(ds.to(k.dtype), k) * scale
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q) * scale
        ty = dqkv.dtype.element_ty
        tl.store(dqkv + i, dq.to(ty), mask=inside)
        tl.store(dqkv + i + C, dk.to(ty), mask=inside)
        tl.store(dqkv + i + 2 * C, dv.to(ty), mask=inside)

    def _launch(kernel, qkv, heads, seq_dim, *tensors):
        """Grid: heads x the token positions off the sequence dim of qkv (B, T, S, 3C) or (B, N, 3C), contiguous."""
        *lead, C3 = qkv.shape
        N, C = lead[seq_dim], C3 // 3
        tok = [math.prod(lead[i + 1:]) for i in range(len(lead))]  # token strides
        batch = [i for i in range(len(lead)) if i != seq_dim]  # one or two batch dims
        t1, (B2, t2) = tok[batch[0]], (lead[batch[1]], tok[batch[1]]) if len(batch) == 2 else (1, 0)
        # N, C, D compile in (a kernel per shape): with D known the masked loads vectorise. 16 is tl.dot's smallest
        # tile; D=72 pads to 128 (the loads are masked: the padding costs registers, not bytes). One warp a program
        # for 16 frames: fastest of 1, 2, 4 on the H200 (README, "Speed experiments")
        BLOCK_N = max(16, triton.next_power_of_2(N))
        wrap_triton(kernel)[(heads, math.prod(lead) // N)](
            *tensors, t1, t2, tok[seq_dim], B2, (C // heads) ** -0.5, C=C, N=N, D=C // heads, BLOCK_N=BLOCK_N,
            BLOCK_D=max(16, triton.next_power_of_2(C // heads)), num_warps=BLOCK_N // 16)

    @triton_op("opensora::short_attention", mutates_args={})
    def short_attention(qkv: torch.Tensor, heads: int, seq_dim: int) -> torch.Tensor:
        qkv = qkv.contiguous()
        out = qkv.new_empty(*qkv.shape[:-1], qkv.shape[-1] // 3)
        _launch(_short_fwd, qkv, heads, seq_dim, qkv, out)
        return out

    @triton_op("opensora::short_attention_backward", mutates_args={})
    def short_attention_backward(qkv: torch.Tensor, dout: torch.Tensor, heads: int, seq_dim: int) -> torch.Tensor:
        qkv, dout = qkv.contiguous(), dout.contiguous()
        dqkv = torch.empty_like(qkv)
        _launch(_short_bwd, qkv, heads, seq_dim, qkv, dout, dqkv)
        return dqkv

    def _setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.heads, ctx.seq_dim = inputs[1], inputs[2]

    def _backward(ctx, dout):
        return short_attention_backward(ctx.saved_tensors[0], dout, ctx.heads, ctx.seq_dim), None, None

    short_attention.register_autograd(_backward, setup_context=_setup)
