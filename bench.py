"""Speed of the real architectures on one GPU, random weights: training steps and end-to-end sampling, in one table.

    python bench.py                      # the table (STDiT-XL/2, SD VAE, T5-XXL encoder; bf16)
    python bench.py --check              # every fast path beside the plain path: errors against an fp32 reference
    python bench.py --rows=c256 --plain  # some rows, plain path (eager, no fusion)
    python bench.py --set=t512.batch=4   # change a row's setting
    python bench.py --tiny               # tiny random models on the CPU: a smoke test of this file
    torchrun --nproc_per_node=2 bench.py --rows=c256,c512 --compile=0                 # ZeRO-2 over 2 GPUs
    torchrun --nproc_per_node=2 bench.py --rows=c256,c512 --compile=0 --sp_size=2     # Ulysses over 2 GPUs

Rows (train.py's step: encode, IDDPM training_losses, backward, ZeroAdamW step, EMA; data loading not included): t256
/ c256 train 16x256 with VAE + T5 encoding in the step / from cached latents and caption embeddings; t512 / c512 the
same at 16x512; t64 / c64 train 64x512 online / cached with gradient checkpointing; l360 a long clip (360x512, cached,
all blocks recomputed), for sequence parallelism; s256 / s512 sample one video (T5, 20 DPM-Solver steps with guidance,
VAE decode; model build excluded), i256 / i512 with 100 IDDPM steps; -pab, -teacache: with that cache (stepcache.py).
Under torchrun the train rows run train.py's distributed step (ZeroAdamW over all ranks, Ulysses when sp_size > 1),
`batch` samples per sequence-parallel group, and every rate is per GPU. Cached rows draw random caption embeddings
(T5-XXL's width, all 120 tokens): no encoder is built unless a row needs one.
Columns: samples/s (videos/s for sampling), latent tokens/s through the model, the model's TFLOP/s counted
analytically (flops() below: matmuls + attention, training x3; checkpoint recomputation NOT counted, nor what a cache
skips; VAE and T5 not counted), MFU against the bf16 matmul rate measured here (8192^3), peak allocated memory.
"""
import argparse
import ast
import gc
import json
import math
import os
import statistics
import tempfile
import time

import av
import numpy as np
import torch
import torch.distributed as dist

import attention_kernel
import data
import diffusion
import layers
import lora
import model as stdit
import parallel
import sample
import stepcache
import text
import vae as vaes
import video
from cache import cache_bytes
from config import load_config
from errors import DTYPES, run_dtype, write_atomic
from train import encode, train_step

# ----------------------------------------------------------------------------- the real architectures, random weights
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
              act_fn="silu", sample_size=256)  # stabilityai/sd-vae-ft-ema's config.json
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu",
              vocab_size=32128, relative_attention_num_buckets=32, layer_norm_epsilon=1e-6)  # t5-v1_1-xxl's
CLIP_WIDTH = 512  # openai/clip-vit-base-patch32's pooled caption, what v1.0's DiT/Latte configs use
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
TINY_MODEL = dict(depth=2, hidden_size=64, num_heads=4)
TINY_T5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu")
TINY_ROWS = dict(train=dict(size=64, frames=4, steps=2, batch=2), sample=dict(size=64, frames=4, steps=3, repeat=1),
                 memory=dict(overrides=["--num_frames=4", "--image_size=(64, 64)", "--scheduler.num_sampling_steps=2"]))
CAPTION = ("a drone shot of waves breaking on a rocky coast at sunset, seagulls flying over the water, the camera "
           "slowly moving along the cliffs")  # ByT5-style byte tokens: padded/truncated to L = 120 like T5's

ROWS = {  # frames, pixel size, batch, checkpointed blocks (the first that fits of a list), online encoding
    "t256": dict(kind="train", frames=16, size=256, batch=8, ckpt=[0, 2, 4, 8, 14, 20, 28], online=True, steps=8),
    "c256": dict(kind="train", frames=16, size=256, batch=8, ckpt=[0, 8, 14, 20, 28], online=False, steps=8),
    "c512": dict(kind="train", frames=16, size=512, batch=2, ckpt=[0, 8, 14, 20, 28], online=False, steps=6),
    "t512": dict(kind="train", frames=16, size=512, batch=2, ckpt=[0, 2, 4, 8, 14, 20, 28], online=True, steps=6),
    "t64": dict(kind="train", frames=64, size=512, batch=1, ckpt=[10, 12, 14, 16, 20, 24, 28], online=True, steps=4),
    "c64": dict(kind="train", frames=64, size=512, batch=1, ckpt=[10, 12, 14, 16, 20, 24, 28], online=False, steps=4),
    "l360": dict(kind="train", frames=360, size=512, batch=1, ckpt=[28], online=False, steps=2),
    **{n + (c and f"-{c}"): dict(kind="sample", frames=16, size=z, sampler=s, steps=k, repeat=r, cache=c or None,
                                 label=f"sample 16x{z} {'dpm20+cfg' if k == 20 else 'iddpm100'}" + (c and f" {c}"))
       for n, z, s, k, r in (("s256", 256, "dpm-solver", 20, 3), ("s512", 512, "dpm-solver", 20, 2),
                             ("i256", 256, "iddpm", 100, 1), ("i512", 512, "iddpm", 100, 1)) for c in ("", *stepcache.PRESETS)},
    # the zoo from cached latents and captions: v1.0's acceleration table (full attention vs STDiT's split attention)
    **{f"{m[0].lower()}{n}": dict(kind="train", model=f"{m}-XL/2", frames=f, size=z, batch=b, online=False, steps=s,
                                  ckpt=[0, 8, 14, 20, 28] if f < 64 else [10, 12, 14, 16, 20, 24, 28],
                                  label=f"{m} {f}x{z} cached" + " ckpt" * (f == 64))
       for m in ("DiT", "Latte", "PixArt") for n, f, z, b, s in (("256", 16, 256, 8, 6), ("512", 16, 512, 2, 6),
                                                                 ("64", 64, 512, 1, 4))},
    # sample.py end to end with v1.0's inference configs (T5-XXL in fp32, their sampler and dtype), one prompt: peak
    # memory and seconds per stage; m512h: T5 in bf16, m64v: 16 frames per VAE call, both in 10 steps (memory does not
    # depend on them); a512: m512 through app.py's request path (app.generate), to stand beside m512
    **{k: dict(kind="memory", config=f"configs/opensora/inference/{c}.py", **x,
               label=f"{'app' if x.get('app') else 'sample'}.py {c}")
       for k, c, x in (("m256", "16x256x256", {}), ("m512", "16x512x512", {}), ("m64", "64x512x512", {}),
                       ("m512h", "16x512x512", dict(t5="bf16", overrides=["--scheduler.num_sampling_steps=10"])),
                       ("m64v", "64x512x512", dict(vae_micro=16, overrides=["--scheduler.num_sampling_steps=10"])),
                       ("a512", "16x512x512", dict(app=True)))},
    # and its image row: class-conditional DiT-XL/2 on 256x256 images, batch 128 (v1.0: 100 img/s/GPU on H800)
    "img": dict(kind="train", model="DiT-XL/2", condition="label_1000", frames=1, size=256, batch=128, ckpt=[0, 8, 28],
                online=False, steps=8, label="DiT 1x256 images, classes"),
}
NAMES = {k: r.get("label") or f"train {r['frames']}x{r['size']} {'online' if r['online'] else 'cached'}"  # STDiT's
         + " ckpt" * (r["ckpt"][0] > 0) for k, r in ROWS.items()}  # the table's names (the rows before --tiny, --set)


# ----------------------------------------------------------------------------- FLOP count
def flops(m, latent, L, train):
    """Model FLOPs for one sample, latent (T, H, W): 2 per multiply-add of every Linear/conv on its tokens, 4*n*m*C
    per attention (q k^T and a v over all heads), caption keys counted at L (T5 models; a pooled caption counts 1,
    a class 0). train: x3 (backward = 2x forward). Checkpointing recomputes the forward (x4 in all) but that is not
    counted: MFU counts useful work only."""
    C, Cc = m.hidden_size, getattr(m, "caption_channels", None)
    T, H, W = (n // p for n, p in zip(latent, m.patch_size))
    S, N, P = H * W, T * H * W, math.prod(m.patch_size)
    if isinstance(m, stdit.DiT):  # the condition: adaLN-Zero projections per block and in the final layer
        L = 0 if m.num_classes is not None else 1
        cond = len(m.blocks) * 2 * 6 * C * C + 2 * 2 * C * C
    else:
        cond = 2 * 6 * C * C  # t_block, shared
    linear = (N * 2 * P * m.in_channels * C + 2 * (256 * C + C * C) + cond  # patch and timestep embeddings
              + (L * 2 * (Cc * C + C * C) if L else 0)  # caption MLP
              + N * 2 * C * P * m.out_channels)  # final layer
    for i, block in enumerate(m.blocks):
        hidden = block.mlp.fc1.out_features
        linear += N * 2 * 4 * C * C + N * 2 * 2 * C * hidden  # self-attention qkv + proj, MLP
        if getattr(block, "attn_temp", None) is not None:  # STDiT: spatial then temporal attention
            linear += N * 2 * 4 * C * C + T * 4 * S * S * C + S * 4 * T * T * C
        elif getattr(m, "alternating", False):  # Latte: within frames (even blocks), across frames (odd)
            linear += T * 4 * S * S * C if i % 2 == 0 else S * 4 * T * T * C
        else:  # DiT, PixArt: all N tokens
            linear += 4 * N * N * C
        if hasattr(block, "cross_attn"):  # q + proj on the tokens, kv on the caption, attention
            linear += N * 2 * 2 * C * C + L * 2 * 2 * C * C + 4 * N * L * C
    return linear * (3 if train else 1)


def matmul_ceiling(device, n=8192, reps=20):
    """bf16 n^3 matmul rate in TFLOP/s (random data, median of reps timings of 10 matmuls: the sync is negligible)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 * 10 / statistics.median(timed(lambda: [a @ b for _ in range(10)], reps, device, 1)) / 1e12


# ----------------------------------------------------------------------------- building
def latent_size(args, frames, size):
    """The latent (T, h, w) of a (frames, size, size) clip under bench's VAE (the class's own down-sampling)."""
    return vaes.latent_size((frames, size, size), vaes.VideoAutoencoderKL.down_sampling(TINY_VAE if args.tiny else SD_VAE))


def build_encoders(args, device, dtype, t5_dtype=None):
    with device:  # built on the GPU directly: random init of 4.7B T5 parameters on the CPU takes minutes
        vae = vaes.VideoAutoencoderKL(from_pretrained=None, config=TINY_VAE if args.tiny else SD_VAE, dtype=dtype,
                                      device=device, micro_batch_size=args.vae_micro_batch)
        t5 = text.T5Encoder(from_pretrained=None, config=TINY_T5 if args.tiny else T5_XXL, model_max_length=120,
                            device=device, dtype=t5_dtype or dtype)
    if not args.plain and args.compile:  # as train.py
        vae.compile_encoder()
    return vae, t5


def build(args, latent, device, dtype, train, fast, row=None, cfg=None):
    """The row's model (STDiT-XL/2 unless it names another, or `cfg`: a config's model section): T5 captions for
    STDiT/PixArt, pooled CLIP-B/32 captions (512 wide) or classes for DiT/Latte, as v1.0's configs."""
    kind = (row or {}).get("model", "STDiT-XL/2")
    if cfg or kind.startswith(("STDiT", "PixArt")):
        cfg, caption = cfg or dict(type=kind, space_scale=0.5 if latent[1] <= 32 else 1.0), args.caption_channels
    else:
        cfg, caption = dict(type=kind, condition=row.get("condition", "text")), CLIP_WIDTH
    cfg = cfg | (TINY_MODEL if args.tiny else {})
    torch.manual_seed(0)  # the same weights on every rank (ZeroAdamW checks)
    with device:
        m = stdit.build_model(cfg, input_size=latent, in_channels=4, caption_channels=caption, model_max_length=120,
                              dtype=dtype)
    m = m.to(device, dtype).train(train)
    if args.lora and train:  # fine-tuning: rank-r adapters on the frozen random weights, as train.py's lora
        lora.add(m, dict(lora.DEFAULTS, r=args.lora))
    if args.ctx.sp_size > 1:  # as train.py: Ulysses, eager
        parallel.enable_sequence_parallel(m, args.ctx.sp_group)
    elif fast and args.compile:  # as train.py and sample.py
        m.compile_blocks()
    return m


def set_path(fast):
    """Plain path: SDPA for every attention, eager. Fast (train.py's and sample.py's on CUDA): the temporal attention
    in attention_kernel.py's fused kernel (written out, layers.SHORT_KEYS, where triton is missing), cuDNN autotuning
    for the VAE's convolutions, blocks compiled (build)."""
    layers.SHORT_KEYS, attention_kernel.MAX_KEYS = (32, 64) if fast else (0, 0)
    torch.backends.cudnn.benchmark = fast


# ----------------------------------------------------------------------------- rows
def train_row(args, row, vae, t5, device, dtype):
    B, F, size = row["batch"], row["frames"], row["size"]
    latent = latent_size(args, F, size)
    model = build(args, latent, device, dtype, train=True, fast=not args.plain, row=row)
    model.grad_checkpointing = row["ckpt"]
    opt = parallel.ZeroAdamW(model.named_parameters(), lr=2e-5)  # sharded over all ranks; one process: plain AdamW
    scheduler = diffusion.build_scheduler(dict(type="iddpm", timestep_respacing=""))
    torch.manual_seed(args.ctx.dp_rank)  # as train.py: the ranks of a sequence-parallel group draw the same t, noise
    if row["online"]:
        batch = dict(video=torch.rand(B, 3, F, size, size, device=device) * 2 - 1, text=[CAPTION] * B)
    else:  # train.py with a latent cache builds no encoder
        batch = dict(latent=torch.randn(B, 4, *latent, device=device, dtype=dtype),
                     y=torch.randn(B, 1, 120, args.caption_channels, device=device, dtype=dtype),
                     mask=torch.ones(B, 120, dtype=torch.long, device=device))
        if isinstance(model, stdit.DiT):  # one pooled caption, or a class
            batch = dict(latent=batch["latent"], y=torch.randn(B, 1, 1, CLIP_WIDTH, device=device, dtype=dtype)
                         if model.num_classes is None else torch.randint(0, model.num_classes, (B,), device=device))

    def step():
        x, kwargs = encode(batch, vae, t5, device, dtype)
        return train_step(model, opt, scheduler, x, kwargs, 1.0, 0.9999)[0]

    sp = args.ctx.sp_size  # an SP group of sp GPUs trains on B samples a step: B / sp per GPU
    return step, dict(per_call=B / sp, flops=flops(model, latent, 120, train=True), ntok=math.prod(model.grid_size))


def loss_curve(args, device, dtype):
    """--losses N: N training steps of one cached row at a FIXED global batch (the row's batch, split over the
    data-parallel ranks), every sample, timestep and noise drawn from a per-step seed on the CPU, caption dropout off:
    the same run on any number of GPUs, up to rounding. Prints (and --losses_out writes) the global mean loss a step."""
    ctx, name = args.ctx, args.rows.split(",")[0]
    row = ROWS[name]
    B, latent = row["batch"], latent_size(args, row["frames"], row["size"])
    if B % ctx.dp_size:
        raise ValueError(f"--losses: global batch {B} of row {name} is not divisible by {ctx.dp_size} data-parallel ranks")
    b, lo = B // ctx.dp_size, ctx.dp_rank * (B // ctx.dp_size)
    model = build(args, latent, device, dtype, train=True, fast=not args.plain)
    model.grad_checkpointing = row["ckpt"][0] if isinstance(row["ckpt"], list) else row["ckpt"]
    model.y_embedder.dropout_prob = 0.0  # its draw would depend on the local batch size
    opt = parallel.ZeroAdamW(model.named_parameters(), lr=args.lr)
    scheduler = diffusion.build_scheduler(dict(type="iddpm", timestep_respacing=""))
    losses = []
    for i in range(args.losses):
        g = torch.Generator().manual_seed(1000 + i)
        x0, noise = (torch.randn(B, 4, *latent, generator=g) for _ in range(2))
        y = torch.randn(B, 1, 120, args.caption_channels, generator=g)
        t = torch.randint(0, scheduler.num_timesteps, (B,), generator=g)
        x0, noise, y, t = (v[lo:lo + b].to(device) for v in (x0, noise, y, t))
        kwargs = dict(y=y.to(dtype), mask=torch.ones(b, 120, dtype=torch.long, device=device))
        loss = train_step(model, opt, scheduler, x0.to(dtype), kwargs, 1.0, 0.9999, t, noise.to(dtype))[0]
        losses.append(parallel.all_reduce_mean(loss))  # SP peers hold the same loss; equal local batches: the mean
        args.log(f"step {i + 1} loss {losses[-1]:.6f}", flush=True)
    if args.losses_out and ctx.is_main:
        write_atomic(args.losses_out, "".join(f"{v!r}\n" for v in losses))


def sample_row(args, row, vae, t5, device, dtype):
    latent = latent_size(args, row["frames"], row["size"])
    model = build(args, latent, device, dtype, train=False, fast=not args.plain)
    t5.y_embedder = model.y_embedder
    scheduler = diffusion.build_scheduler(dict(type=row["sampler"], num_sampling_steps=row["steps"], cfg_scale=7.0))

    @torch.no_grad()
    def run():  # sample.generate's work for one prompt, minus writing the file
        with stepcache.attached(model, row.get("cache"), row["steps"]):
            z = scheduler.sample(model, t5, (vae.out_channels, *latent), [CAPTION], device, progress=False)
        return vae.decode(z.to(dtype)).float().clamp(-1, 1)

    fwd = flops(model, latent, 120, train=False)
    return run, dict(per_call=1, flops=fwd * 2 * row["steps"], ntok=math.prod(model.grid_size) * 2 * row["steps"],
                     model=model)


def memory_row(args, row, device):
    """sample.generate's stages for one prompt (ROW.app: through app.generate) under the row's v1.0 inference config
    (its sampler, steps, dtype, VAE micro-batch unless the row sets them), random weights of the real sizes, T5-XXL in
    fp32 (ROW.t5=bf16) on the GPU -> the sidecar's seconds and peak GPU memory per stage. Peaks are torch's allocated
    bytes: a card also needs room for the CUDA context (~0.5 GiB) and the caching allocator."""
    cfg = load_config(row["config"], ["--batch_size=1", *row.get("overrides", [])])
    resident = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0  # (counted in the peaks)
    frames = row.get("vae_micro", cfg["vae"].get("micro_batch_size"))
    dtype = run_dtype(cfg["dtype"], device)
    vae, t5 = build_encoders(argparse.Namespace(**dict(vars(args), plain=True, vae_micro_batch=frames)), device, dtype,
                             DTYPES[row.get("t5", "fp32")])  # (plain: the VAE's encoder, unused here, not compiled)
    model = build(args, vae.get_latent_size((cfg["num_frames"], *cfg["image_size"])), device, dtype, train=False,
                  fast=not args.plain, cfg=cfg["model"] | dict(from_pretrained=None))
    with tempfile.TemporaryDirectory() as folder:
        if not args.plain and args.compile:  # as sample.py; a 2-step run first compiles the blocks (not timed)
            sample.generate(dict(cfg, scheduler=dict(cfg["scheduler"], num_sampling_steps=2)), model, vae, t5,
                            [CAPTION], [0], folder, device, dtype, progress=False)
        if row.get("app"):  # app.py's request path on the same models (T5 placed, then back to the CPU)
            import app
            s = cfg["sample_scheduler"] or cfg["scheduler"]
            path = app.generate(dict(cfg, save_dir=folder), (model, vae, t5, device, dtype, {}), CAPTION, 0,
                                s["type"], s["num_sampling_steps"], s["cfg_scale"])
        else:
            path, = sample.generate(cfg, model, vae, t5, [CAPTION], [0], folder, device, dtype, free_text_encoder=True,
                                    progress=False)
        with open(path.rsplit(".", 1)[0] + ".json") as f:
            side = json.load(f)
    stages = ("text_encoder", "diffusion", "vae")
    peak = max(side[f"{s}_peak_gib"] or 0 for s in stages)
    return (f"{row['label']:<30}resident at start {resident:4.1f} GiB  {side['sampler']} {side['num_sampling_steps']:>3} {side['dtype']:<8}"
            f"T5 {row.get('t5', 'fp32')} {frames or 'all':>3} frames/VAE call  " +
            "  ".join(f"{s.split('_')[0]} {side[f'{s}_s']:6.1f} s {side[f'{s}_peak_gib'] or 0:5.1f} GiB" for s in stages)
            + f"  peak {peak:5.1f} GiB")


def timed(fn, n, device, warmup=2):
    """Wall times of n calls after warmup calls (compilation lands there), the device synchronized around each."""
    for _ in range(warmup):
        fn()
    ends = [sample.clock(device)]
    for _ in range(n):
        fn()
        ends.append(sample.clock(device))
    return [b - a for a, b in zip(ends, ends[1:])]


# ----------------------------------------------------------------------------- --check: fast path vs plain path
def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(args, device):
    """Same weights and inputs through (plain bf16, fast bf16) against fp32 plain: forward output and weight gradients
    of the model, in train mode (no caption dropout); the encoders' bf16 against fp32."""
    latent, B = (16, 32, 32) if not args.tiny else (4, 8, 8), 2
    ref = build(args, latent, device, torch.float32, train=True, fast=False)  # (build seeds the weights)
    for p in (p for p in ref.parameters() if not p.any()):  # the layers initialised to zero (cross/temporal
        p.data.normal_(0, 0.02)  # proj, output) drawn at random: they must not hide differences
    plain, fast = (build(args, latent, device, torch.bfloat16, train=True, fast=f) for f in (False, True))
    for m in (ref, plain, fast):
        m.load_state_dict(ref.state_dict())  # (ref's own: a no-op)
        m.y_embedder.dropout_prob = 0.0
    x, t = torch.randn(B, 4, *latent, device=device), torch.tensor([10.0, 990.0], device=device)
    y = torch.randn(B, 1, 120, args.caption_channels, device=device)
    mask = (torch.arange(120, device=device) < torch.tensor([[120], [37]], device=device)).long()  # 120 and 37 tokens
    results = {}  # path: (output, weight gradients)
    for name, m in (("fp32", ref), ("plain bf16", plain), ("fast bf16", fast)):
        set_path(m is fast)
        for ckpt in (False,) if m is ref else (False, True):
            m.grad_checkpointing = ckpt
            m.zero_grad(set_to_none=True)
            out = m(x, t, y, mask)
            (out.float() * torch.linspace(-1, 1, out.numel(), device=device).view(out.shape)).sum().backward()
            grads = torch.cat([p.grad.float().flatten() for p in m.parameters()])
            results[name + " + ckpt" * ckpt] = out.detach(), grads
    exact = results.pop("fp32")
    print(f"{'STDiT path':<28}{'out err':>10}{'grad err':>10}   (relative Frobenius error against fp32 plain)")
    pairs = [(n, v, exact) for n, v in results.items()] + [("fast vs plain bf16", results["fast bf16"],
                                                              results["plain bf16"])]
    for name, (o, g), (o0, g0) in pairs:
        print(f"{name:<28}{rel(o, o0):>10.2e}{rel(g, g0):>10.2e}")
    del ref, plain, fast, results, exact
    # encoders: bf16 (the speed path, set last above) against fp32, same weights
    v32, t32 = build_encoders(argparse.Namespace(**dict(vars(args), plain=True)), device, torch.float32)
    v16, t16 = build_encoders(args, device, torch.bfloat16)  # fast path: encoder compiled
    video = torch.rand(1, 3, 4, 256, 256, device=device) * 2 - 1
    z32, z16 = v32.encode(video, sample=False), v16.encode(video.bfloat16(), sample=False)
    v16.module.encoder._compiled_call_impl = None  # undo nn.Module.compile: the same encoder, eager
    print(f"{'VAE encode bf16 (fast)':<28}{rel(z16, z32):>10.2e}")
    print(f"{'VAE encode fast vs plain':<28}{rel(z16, v16.encode(video.bfloat16(), sample=False)):>10.2e}")
    print(f"{'VAE decode bf16':<28}{rel(v16.decode(z32.bfloat16()), v32.decode(z32)):>10.2e}")
    print(f"{'T5 encode bf16':<28}{rel(t16.encode([CAPTION])['y'], t32.encode([CAPTION])['y']):>10.2e}")
    videos = {}  # each cache preset against exact sampling (the row before it), same weights and noise
    for name in [n for n in ROWS if n[:4] in ("s256", "i256")]:
        fn, r = sample_row(args, ROWS[name], v16, t16, device, torch.bfloat16)
        for p in (p for p in r["model"].parameters() if not p.any()):  # as above: the zero layers made random
            p.data.normal_(0, 0.02)
        torch.manual_seed(0)
        videos[name] = fn()
        if ROWS[name]["cache"]:
            print(f"{name + ' vs exact, PSNR':<28}{stepcache.psnr(videos[name], videos[name[:4]]):>7.1f} dB")


# ----------------------------------------------------------------------------- --loader: the data loader and the cache
LOADER_ROWS = {"16x256": (16, 256, 8), "16x512": (16, 512, 2), "64x512": (64, 512, 1)}  # bench.py's online rows:
SOURCES = {"1080p": (1080, 1920, 250), "4K": (2160, 3840, 250),  # frames (every 3rd), size, batch; height, width,
           "512p": (512, 910, 30)}  # keyframe interval: x264's default, or prepare.py scenes --shorter_size 512's


def bench_clip(path, seconds, height, width, keyint=250, fps=30):
    """A synthetic camera pan (4 px a frame) over smooth colour blobs and fine texture, with sensor noise, encoded by
    x264 (crf 23, preset veryfast, a keyframe every `keyint` frames): ~7 Mbit/s at 1080p, 28 at 4K, like stock
    footage. Written once: an existing file is kept."""
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(0)
    pan = 4 * seconds * fps
    blobs = torch.rand(1, 3, height // 64 + 2, (width + pan) // 64 + 2, generator=torch.Generator().manual_seed(0))
    blobs = torch.nn.functional.interpolate(blobs, size=(height, width + pan), mode="bilinear")[0]  # (3, H, W + pan)
    scene = (blobs.permute(1, 2, 0).numpy() * 200).astype(np.int16)
    texture = rng.integers(0, 40, (height // 4 + 1, (width + pan) // 4 + 1, 1), dtype=np.int16)
    scene += texture.repeat(4, 0).repeat(4, 1)[:height, :width + pan]
    noise = [rng.integers(-12, 13, (height, width, 3), dtype=np.int16) for _ in range(5)]
    frames = (np.clip(scene[:, 4 * t:4 * t + width] + noise[t % 5], 0, 255).astype(np.uint8)
              for t in range(seconds * fps))
    return video.write_video(path, frames, fps, options=dict(crf="23", preset="veryfast", g=str(keyint)))


def loader_rate(csv_path, frames, size, batch, workers, samples):
    """Samples/s through a DataLoader of `workers` processes over VideoDataset(csv_path): decode, resize/crop, flip,
    collate; timed after each worker's first batch."""
    dataset = data.VideoDataset(csv_path, frames, 3, (size, size))
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers))
    for _ in range(workers):
        next(loader)
    t0, n = time.perf_counter(), 0
    while n < samples:
        n += len(next(loader)["text"])
    return n / (time.perf_counter() - t0)


def window_seconds(path, at, frames=16, repeats=3, seek=True):
    """Median seconds to decode (data.decode's calls) a window of `frames` frames every 3rd starting `at` s in."""
    def window():
        _, start, step = video.frame_timing(path)
        with av.open(path) as c:
            first = round(at * c.streams.video[0].average_rate)
        picks = np.linspace(first, first + 3 * frames - 1, frames, dtype=int).tolist()
        got = video.frames_seeking(path, picks, start, step) if seek else video.frames_from_start(path, picks)
        assert got is not None and len(got) == frames, path
    return statistics.median(timed(window, repeats, torch.device("cpu"), warmup=0))


def loader_bench(clip_dir, workers, samples, feed):
    """Print the loader's samples/s per worker on generated 30 s clips (1080p and 4K, and 512p with a keyframe every
    second as prepare.py scenes writes) for bench.py's online training rows, the workers each row needs at `feed`
    samples/s, the cost of a window by position in a 60 s 1080p clip, and the cache's bytes per sample."""
    torch.set_num_threads(1)  # as in DataLoader workers
    print("| source | loader row | " + " | ".join(f"{w} workers: samples/s per worker" for w in workers) + " |\n"
          + "|---|---|" + "---|" * len(workers))
    per_worker = {}
    for source, (height, width, keyint) in SOURCES.items():
        clip = bench_clip(os.path.join(clip_dir, f"{source}_30s.mp4"), 30, height, width, keyint)
        csv_path = write_atomic(os.path.join(clip_dir, f"{source}.csv"), data.csv_text([[clip, "bench"]] * 1000))
        for row, (frames, size, batch) in LOADER_ROWS.items():
            rates = [loader_rate(csv_path, frames, size, batch, w, samples) / w for w in workers]
            per_worker[source, row] = rates[-1]
            print(f"| {source} | {row} b{batch} | " + " | ".join(f"{r:.2f}" for r in rates) + " |", flush=True)
    for row, rate in feed.items():
        print(f"{row} at {rate} samples/s needs " + ", ".join(
            f"{math.ceil(rate / per_worker[source, row])} workers from {source}" for source in SOURCES))
    long = bench_clip(os.path.join(clip_dir, "1080p_60s.mp4"), 60, 1080, 1920)
    near, far = window_seconds(long, 5), window_seconds(long, 55)
    print(f"16-frame window of a 60 s 1080p clip: at 5 s {near:.2f} s, at 55 s {far:.2f} s ({far / near:.2f}x); "
          f"decoded from the start at 55 s: {window_seconds(long, 55, repeats=1, seek=False):.2f} s")
    print("| sample | cached | bytes | v1.0's estimate (1 MB + 4 MB) / bytes |\n|---|---|---|---|")
    for name, latent in (("16x256", (4, 16, 32, 32)), ("64x512", (4, 64, 64, 64))):
        for tokens, windows, posterior in ((120, 1, False), (30, 1, False), (30, 1, True), (30, 4, True)):
            n = cache_bytes(latent, tokens, 4096, windows, posterior)
            print(f"| {name} | {tokens} tokens, {windows} window{'s' * (windows > 1)}{', std' * posterior} | "
                  f"{n / 2**20:.2f} MiB | {5 * 2**20 / n:.1f}x |")


# ----------------------------------------------------------------------------- command line
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--set", action="append", default=[], help="ROW.KEY=VALUE, e.g. t512.batch=4")
    parser.add_argument("--plain", action="store_true", help="the plain path: no compilation, no fused kernels")
    parser.add_argument("--compile", type=int, default=1, help="torch.compile each block (fast path)")
    parser.add_argument("--vae_micro_batch", type=int, default=None, help="frames per VAE call (None: all)")
    parser.add_argument("--check", action="store_true", help="fast vs plain path errors instead of the table")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a smoke test)")
    parser.add_argument("--profile", help="a row to profile (top kernels) after the table")
    parser.add_argument("--profile_ckpt", type=int, default=28, help="checkpointed blocks in the profiled row")
    parser.add_argument("--lora", type=int, default=0, help="R > 0: the train rows fine-tune LoRA adapters of rank R "
                        "(TFLOP/s, MFU still count full training's backward)")
    parser.add_argument("--sp_size", type=int, default=1, help="under torchrun: Ulysses sequence-parallel group size")
    parser.add_argument("--losses", type=int, default=0, help="N: the loss curve of N steps of the first row instead")
    parser.add_argument("--losses_out", help="--losses: write the losses here, one a line")
    parser.add_argument("--lr", type=float, default=2e-5, help="--losses: AdamW learning rate")
    parser.add_argument("--loader", metavar="CLIP_DIR", help="the loader's samples/s per worker on clips generated in "
                        "CLIP_DIR (kept for the next run), window cost by position, cache bytes per sample (CPU)")
    parser.add_argument("--workers", default="1,2", help="--loader: comma-separated worker counts to time")
    parser.add_argument("--samples", type=int, default=8, help="--loader: samples timed per measurement")
    parser.add_argument("--feed", default="16x256=13.9,16x512=3.21,64x512=0.769",
                        help="--loader: samples/s per GPU to feed, per row (default: the online rows on an H100)")
    args = parser.parse_args()
    if args.loader:
        feed = {k: float(v) for k, v in (kv.split("=") for kv in args.feed.split(",") if kv)}
        return loader_bench(args.loader, [int(w) for w in args.workers.split(",")], args.samples, feed)
    args.ctx = ctx = parallel.setup(args.sp_size)  # torchrun's environment; plain `python`: one process
    args.log = log = print if ctx.is_main else (lambda *a, **k: None)
    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else ctx.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.caption_channels = TINY_T5["d_model"] if args.tiny else T5_XXL["d_model"]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 parts (loss, AdamW): tf32
    torch._dynamo.config.cache_size_limit = 64  # blocks share one graph; sampling and training shapes add a few
    torch._dynamo.config.automatic_dynamic_shapes = False  # a new batch size is a new static graph, not a dynamic one
    for row in ROWS.values() if args.tiny else ():
        row.update(TINY_ROWS[row["kind"]])
    for key, value in (item.split("=", 1) for item in args.set):
        ROWS[key.split(".")[0]][key.split(".")[1]] = ast.literal_eval(value)
    set_path(not args.plain)
    if args.check:
        return check(args, device)
    if args.losses:
        loss_curve(args, device, dtype)
        return parallel.cleanup()

    cuda = device.type == "cuda"
    ceiling = matmul_ceiling(device) if cuda else float("nan")
    names = args.rows.split(",")
    vae = t5 = None
    if any(ROWS[n]["kind"] == "sample" or ROWS[n].get("online") for n in names):  # T5-XXL only where a row needs it
        t0 = time.perf_counter()
        vae, t5 = build_encoders(args, device, dtype)
        log(f"encoders built in {time.perf_counter() - t0:.0f} s")
    log(f"{ctx.world_size} process(es): dp {ctx.dp_size} x sp {ctx.sp_size}; bf16 matmul ceiling {ceiling:.0f} TFLOP/s")
    lines, stages = [], []
    for name in names:
        row = ROWS[name]
        if row["kind"] == "memory":  # sample.py's own stages, read from the sidecar of the video it wrote
            torch._dynamo.reset()  # (the compiled graphs of the row before hold its model: not this row's memory)
            gc.collect()
            torch.cuda.empty_cache()
            stages.append(memory_row(args, row, device))
            log(stages[-1], flush=True)
            continue
        train, t0, r = row["kind"] == "train", time.perf_counter(), None
        if t5 is not None:  # train.py with a latent cache builds no T5: its 9.5 GB are not part of this row
            t5.model.to("cpu" if train and not row["online"] else device)
        for ckpt in row["ckpt"] if isinstance(row.get("ckpt"), list) else [row.get("ckpt")]:
            gc.collect()  # (what a failed try left)
            torch.cuda.empty_cache()  # (a no-op without CUDA)
            sample.peak_gib(device)  # the row's peak is its own
            try:  # the fewest checkpointed blocks that fit: each one recomputes its forward in the backward pass
                fn, r = (train_row if train else sample_row)(args, dict(row, ckpt=ckpt), vae, t5, device, dtype)
                r["times"] = timed(fn, row["steps"] if train else row["repeat"], device, warmup=2 if train else 1)
                break
            except torch.cuda.OutOfMemoryError:  # try the next setting; a row that never fits says so in the table
                log(f"{NAMES[name]}: OOM with ckpt={ckpt} at {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
                    flush=True)
            fn = r = None  # (outside the except clause: its traceback holds the failed step's tensors)
        if r is None:
            lines.append(f"{NAMES[name]:<30}{'OOM':>9}  (batch {row.get('batch')})")
            continue
        del fn  # (its model, its optimizer: freed before the next row)
        samples = r["per_call"] / statistics.median(r["times"])  # per GPU
        peak = torch.tensor(torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"), device=device)
        if dist.is_initialized():  # the fullest GPU
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        tflops = r["flops"] * samples / 1e12
        setting = f"b{row['batch']} ck{int(ckpt)}" if train else f"{statistics.median(r['times']):.3f} s"
        gpu = f"{tflops:>9.1f}{100 * tflops / ceiling:>6.1f}%{peak.item():>9.1f}" if cuda else f"{'-':>9}{'-':>7}{'-':>9}"
        lines.append(f"{NAMES[name]:<30}{setting:>9}{samples:>10.3f}{r['ntok'] * samples:>11.0f}{gpu}")
        log(lines[-1], f"  [{time.perf_counter() - t0:.0f} s incl. build/compile; step times "
                       f"{', '.join(f'{t:.3f}' for t in r['times'])}; {r['flops'] / 1e12:.2f} TFLOP/sample]",
            flush=True)
    if t5 is not None:  # (for --profile)
        t5.model.to(device)
    log(f"\n{'row':<30}{'setting':>9}{'samples/s':>10}{'tokens/s':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>9}"
        + " per GPU" * (ctx.world_size > 1))
    log("\n".join(lines))
    if stages:
        log("\nsampling stages (sample.generate: T5, the diffusion model, the VAE; seconds and peak GPU memory)")
        log("\n".join(stages))
    log(f"torch {torch.__version__}, {ctx.world_size} x {torch.cuda.get_device_name() if cuda else 'cpu'} (dp "
        f"{ctx.dp_size} x sp {ctx.sp_size}), {'plain' if args.plain else 'fast'} path"
        f"{f', LoRA r{args.lora}' * bool(args.lora)}, bf16 ceiling {ceiling:.0f} TFLOP/s, {time.strftime('%Y-%m-%d')}")
    if args.profile:
        profile(args, args.profile, vae, t5, device, dtype)
    parallel.cleanup()


def profile(args, name, vae, t5, device, dtype):
    """Top CUDA kernels of a row's steps (after its warm-up)."""
    from torch.profiler import ProfilerActivity, profile as prof
    row = dict(ROWS[name], ckpt=args.profile_ckpt)
    fn, _ = (train_row if row["kind"] == "train" else sample_row)(args, row, vae, t5, device, dtype)
    timed(fn, 0, device)  # warm-up, compilation
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        timed(fn, 2 if row["kind"] == "train" else 1, device, warmup=0)
    print(f"profile of {NAMES[name]}, {2 if row['kind'] == 'train' else 1} calls:")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))


if __name__ == "__main__":
    main()
