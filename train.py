"""Train a model of the zoo. The step first (encode, train_step: what bench.py times too), then main(), read top to
bottom: config, distributed, data, encoders, model, optimizer, resume, loop, samples.

    torchrun --nproc_per_node 8 train.py configs/16x256.py --data_path=train.csv
    python train.py configs/shapes.py                      # the CPU demo
    python train.py configs/shapes.py --load=outputs/shapes  # resume from the newest checkpoint that loads
"""
import itertools
import math
import os
import random
import sys
import time

import torch
from tqdm import tqdm

import lora
import parallel
import sample
import toy
from cache import CachedDataset, build_cache, cache_complete, read_meta
from checkpoints import fit, newest_that_loads, read_checkpoint, save_checkpoint
from config import load_config, validate
from data import video_dataset
from diffusion import build_scheduler
from errors import BadInput, hold, one_line_errors, run_dtype, write_atomic
from model import PixArtMS, build_model
from text import build_text_encoder
from vae import build_vae


# ----------------------------------------------------------------------------- the step
def encode(batch, vae, text_encoder, device, dtype, size_args=None):
    """A batch of (video, text), or cached (latent, y, mask) -> x0 (B, C, T, h, w) and the model's keyword arguments
    (y; mask for T5 captions; data_info for PixArtMS, every clip cropped to image_size: size_args)."""
    if "latent" in batch:
        kwargs = {k: batch[k].to(device, dtype if batch[k].is_floating_point() else None) for k in ("y", "mask")
                  if k in batch}
        return batch["latent"].to(device, dtype), kwargs | (size_args or {})
    with torch.no_grad():
        return vae.encode(batch["video"].to(device, dtype)), text_encoder.encode(batch["text"]) | (size_args or {})


def frame_masks(mask_ratios, B, T, rng):
    """v1.1's MaskGenerator: (B, T) bool, False = a condition frame. Per row one rng.random() picks a type
    (config.MASK_TYPES) by the ratios' running sum in dict order; "quarter" types condition randint(1, T // 4) frames (1 below 4 frames),
    "image" types one; at a random place, at the head, the tail, or both (the older names: as the quarter types).
    rng: a random.Random (its draws equal v1.1's from Python's random: iddpm_mask_ref.pt `mask_generator`)."""
    masks = torch.ones(B, T, dtype=torch.bool)
    for row in masks:
        u = rng.random()  # (no type: the ratios sum to just under 1)
        kind = next((k for k, c in zip(mask_ratios, itertools.accumulate(mask_ratios.values())) if u < c), "mask_no")
        if T <= 1 or kind == "mask_no":
            continue
        k = 1 if "image" in kind else rng.randint(1, max(T // 4, 1))  # (v1.1: an error below 4 frames)
        if kind.endswith("random"):
            p = rng.randint(0, T - k)
            row[p:p + k] = False
        row[:k * ("head" in kind)] = row[T - k * ("tail" in kind):] = False
    return masks


def train_step(model, opt, scheduler, x, model_kwargs, grad_clip, ema_decay, t=None, noise=None, mask=None):
    """One training step, the one train.py runs and bench.py times: the IDDPM loss at random timesteps t (or the given
    ones), backward (ZeRO-2: each gradient bucket reduce-scattered on the way), the clipped AdamW update of this rank's
    shard, the weights all-gathered, then the EMA of the fp32 master shard unless the update was skipped (a non-finite
    gradient norm, the same on every rank). mask (B, T) bool: v1.1's frame mask (frame_masks), to the model as x_mask
    and to the loss. Returns (loss, grad_norm)."""
    if t is None:
        t = torch.randint(0, scheduler.num_timesteps, (x.shape[0],), device=x.device)
    model_kwargs = model_kwargs if mask is None else dict(model_kwargs, x_mask=mask)
    loss = scheduler.training_losses(model, x, t, model_kwargs, noise=noise, mask=mask)["loss"].mean()
    opt.zero_grad()
    loss.backward()
    grad_norm = opt.step(grad_clip)
    if math.isfinite(grad_norm):
        opt.update_ema(ema_decay)  # (v1.0 skips pos_embed, a buffer here anyway)
    return loss, grad_norm


def main(argv):
    # ------------------------------------------------------------------------- config
    if len(argv) < 1:
        raise BadInput("usage: [torchrun ...] train.py CONFIG.py [--key=value ...]")
    cfg = load_config(argv[0], argv[1:])
    run_dir = os.path.join(cfg["outputs"], os.path.splitext(os.path.basename(argv[0]))[0])
    if cfg["load"]:  # a resumed run goes on in the folder of its checkpoints
        run_dir = cfg["load"] if os.path.isdir(cfg["load"]) else os.path.dirname(cfg["load"]) or "."
    validate(cfg, "train", run_dir)  # every rule, before anything is written or loaded
    if os.environ.get("RANK", "0") == "0":  # one run at a time in a folder (under torchrun: rank 0 holds it)
        hold(run_dir)

    def check_load(model_args):  # the checkpoint's weights against the config's model, on no memory (meta)
        if not ckpt.get("base"):  # (LoRA: the adapters, checked against their base below)
            with torch.device("meta"):
                fit(ckpt["model"], build_model(cfg["model"] | dict(from_pretrained=None), **model_args), load_path)

    if cfg["load"]:  # read now, so that a bad file stops the run before the encoders load; a truncated one is skipped
        load_path, ckpt = newest_that_loads(cfg["load"], read_checkpoint)
        if "model_args" in ckpt:  # (older files lack them: checked once the encoders give them, before the build)
            check_load(ckpt["model_args"])

    # ------------------------------------------------------------------------- distributed
    ctx = parallel.setup(cfg["sp_size"])
    device = ctx.device
    log = print if ctx.is_main else (lambda *a, **k: None)
    dtype = run_dtype(cfg["dtype"], device, log)  # CPU trains in fp32
    if device.type == "cuda":  # tf32 for the fp32 parts (loss, optimizer), cuDNN autotuning for the VAE's convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True

    # ------------------------------------------------------------------------- data
    if ctx.is_main:
        toy.ensure_shapes(cfg)  # the demo makes its own toy data set on first use
    parallel.barrier()
    if cfg["cache_dir"] and not cache_complete(cfg):  # every rank encodes its share of the shards
        build_cache(cfg, device=device, rank=ctx.rank, world_size=ctx.world_size)
    parallel.barrier()  # on every rank: one that found the cache complete (the others' last shards renamed) waits too
    dataset = CachedDataset(cfg) if cfg["cache_dir"] else video_dataset(cfg)
    sampler = parallel.ShardedSampler(len(dataset), ctx.dp_rank, ctx.dp_size, seed=cfg["seed"])
    loader = torch.utils.data.DataLoader(  # its own generator: the workers' seeding off the global RNG (exact resume)
        dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["num_workers"], drop_last=True,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg["seed"]))
    if len(loader) == 0:
        raise BadInput(f"batch_size={cfg['batch_size']}: {cfg['data_path']}'s {len(dataset)} samples give no full batch "
                       f"per rank ({ctx.dp_size} data-parallel ranks): lower batch_size")

    # ------------------------------------------------------------------------- encoders
    vae = build_vae(cfg["vae"], device=device, dtype=dtype)
    text_encoder = None if cfg["cache_dir"] else build_text_encoder(cfg["text_encoder"], device=device, dtype=dtype)
    latent_size = vae.get_latent_size((cfg["num_frames"], *cfg["image_size"]))

    # ------------------------------------------------------------------------- model
    model_args = dict(input_size=tuple(latent_size), in_channels=vae.out_channels,  # from the encoders, as v1.0
                      caption_channels=text_encoder.output_dim if text_encoder else read_meta(cfg)["caption_channels"],
                      model_max_length=cfg["text_encoder"].get("model_max_length"))
    if cfg["load"] and ckpt.get("model_args") != model_args:  # an older file, or other encoders: before the build,
        check_load(model_args)  # whose from_pretrained would load (and check) a released file first
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    # LoRA: the base loaded into the bf16 model, then the adapters (on its device and dtype), the only trainable part
    model = build_model(cfg["model"] | (dict(from_pretrained=None) if cfg["lora"] else {}), **model_args, dtype=dtype)
    model = model.to(device, dtype).train()
    base = lora.add(model, cfg["lora"], cfg["model"]["from_pretrained"]) if cfg["lora"] else None
    model.grad_checkpointing = cfg["grad_checkpoint"]
    if cfg["compile"] and device.type == "cuda" and ctx.sp_size == 1:  # bench.py's fast path. CPU: eager; sequence
        model.compile_blocks()  # parallel: eager too (the all-to-all inside the blocks is not traced, nor tested compiled)
        vae.compile_encoder()
    if ctx.sp_size > 1:
        parallel.enable_sequence_parallel(model, ctx.sp_group)
    scheduler = build_scheduler(cfg["scheduler"])
    torch.manual_seed(cfg["seed"] + ctx.dp_rank)  # then per data-parallel rank: SP peers draw the same t, noise, dropout
    log(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, latent {tuple(latent_size)}, "
        f"{ctx.world_size} ranks (dp {ctx.dp_size} x sp {ctx.sp_size}), {dtype}")

    # ------------------------------------------------------------------------- optimizer
    opt = parallel.ZeroAdamW(model.named_parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])  # over all ranks
    log(f"optimizer: {opt.memory_bytes() / 2**20:.1f} MiB per rank (fp32 master, AdamW moments, EMA: 1/{ctx.world_size} "
        f"each)")


    def ema_state_dict():
        """The EMA as a full fp32 STDiT state_dict on rank 0 (None elsewhere; every rank takes part in the gather). The
        EMA lives in the optimizer, sharded, over the fp32 master weights; frozen parameters and buffers are the model's."""
        ema = opt.full("ema")
        return None if ema is None else {k: ema.get(k, v.detach().float().cpu()) for k, v in model.state_dict().items()}

    # ------------------------------------------------------------------------- resume
    step = epoch = start = 0  # global step, epoch, samples of this epoch already consumed per rank
    if cfg["load"]:
        if (ckpt.get("base") or {}).get("sha256") != (base or {}).get("sha256"):  # adapters go on their own base
            was, now = ((b or {}).get("name", "none (full training)") for b in (ckpt.get("base"), base))
            raise BadInput(f"--load {load_path}: trained on the base {was}, not {now}: use its model.from_pretrained "
                           "and lora")
        if not base:  # (check_load has fitted its weights to this model)
            model.load_state_dict(ckpt["model"])
            opt.load_full("ema", {n: ckpt["ema"][n] for n, _ in opt.params})
        opt.load_state_dict(ckpt["optimizer"])  # (writes the master weights into the parameters: LoRA's adapters)
        step, epoch, start = ckpt["step"], ckpt["epoch"], ckpt["start"]
        torch.set_rng_state(ckpt["rng"][ctx.dp_rank % len(ckpt["rng"])])
        if device.type == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"][ctx.dp_rank % len(ckpt["cuda_rng"])])
        log(f"resumed from {load_path} at step {step} (epoch {epoch}, sample {start})")
        del ckpt
    loss_txt = os.path.join(run_dir, "loss.txt")  # the loss curve, cut back to the step resumed from (a fresh run: empty)
    if ctx.is_main:  # (hold made run_dir)
        lines = open(loss_txt).readlines() if os.path.exists(loss_txt) else []  # (a line a kill cut short: no "\n")
        kept = {int(n.split(" ")[0]): n for n in lines if n.endswith("\n") and n.split(" ")[0].isdigit()}
        write_atomic(loss_txt, "".join(kept[s] for s in sorted(kept) if s <= step))  # one line a step: the last


    def checkpoint():
        """Every rank takes part (the optimizer state is gathered); rank 0 writes, atomically."""
        rng = parallel.all_gather_object(torch.get_rng_state(), ctx.dp_group)
        optimizer = opt.state_dict()  # LoRA: the adapters (fp32 master) and their optimizer only, a few MB, + the base
        state = dict(model=(optimizer or {}).get("master") if base else model.state_dict(), base=base,
                     ema=None if base else ema_state_dict(), optimizer=optimizer, step=step, epoch=epoch,
                     start=start, rng=rng, config=cfg, model_args=model_args)
        if device.type == "cuda":
            state["cuda_rng"] = parallel.all_gather_object(torch.cuda.get_rng_state(), ctx.dp_group)
        if ctx.is_main:
            log(f"saved {save_checkpoint(state, os.path.join(run_dir, f'step{step:07d}.pt'), cfg['keep_last'])}")
        parallel.barrier()


    size_args = dict(data_info=PixArtMS.data_info(cfg["image_size"], device, dtype)) if cfg["multi_resolution"] else {}


    # ------------------------------------------------------------------------- loggers (optional, rank 0)
    loggers = []  # each called with (step, dict of scalars) every log_every steps, beside outputs/<run>/loss.txt
    try:
        if cfg["wandb"] and ctx.is_main:
            import wandb
            wandb.init(project="nanosora", name=os.path.basename(run_dir), config=cfg, resume="allow")
            loggers.append(lambda s, scalars: wandb.log(scalars, step=s))
        if cfg["tensorboard"] and ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            loggers.append(lambda s, scalars: [writer.add_scalar(k, v, s) for k, v in scalars.items()])
    except ImportError as e:
        raise BadInput(f"wandb/tensorboard is on in the config but cannot be imported ({e}): pip install it or turn it "
                       "off") from e

    # ------------------------------------------------------------------------- loop
    max_steps = cfg["max_steps"] or cfg["epochs"] * len(loader)
    bad_steps = bad_in_a_row = 0
    bar = tqdm(total=max_steps, initial=step, disable=not ctx.is_main, dynamic_ncols=True)
    t_last, n_last = time.time(), step
    while step < max_steps:
        sampler.set_epoch(epoch, start=start)
        dataset.set_epoch(epoch)  # temporal windows and flips from (seed, epoch, index); workers start anew each epoch
        for batch in loader:
            x, model_kwargs = encode(batch, vae, text_encoder, device, dtype, size_args)
            # frame masks from (seed, step, rank) alone: a resumed run draws the same ones, SP peers too
            mask = frame_masks(cfg["mask_ratios"], len(x), x.shape[2], random.Random(f"{cfg['seed']}-{step}-"
                               f"{ctx.dp_rank}")).to(device) if cfg["mask_ratios"] else None
            # LoRA: no EMA (decay 0: the EMA is the weights), as Open-Sora 2.0: a fine-tune of a few hundred steps
            # would mostly average in the zero-delta start, and the base already is an EMA
            loss, grad_norm = train_step(model, opt, scheduler, x, model_kwargs, cfg["grad_clip"],
                                         0.0 if base else cfg["ema_decay"], mask=mask)
            step, start = step + 1, start + cfg["batch_size"]
            bad = not math.isfinite(grad_norm)  # the optimizer skipped this update on every rank
            bad_steps, bad_in_a_row = bad_steps + bad, (bad_in_a_row + 1) * bad
            if bad_in_a_row >= cfg["max_bad_steps"]:
                sys.exit(f"step {step}: {bad_in_a_row} non-finite losses/gradients in a row; stopping "
                         f"(lower lr, check the data, or --load the last good checkpoint)")
            if step % cfg["log_every"] == 0 or step == max_steps:
                loss_avg = parallel.all_reduce_mean(loss.detach())
                if ctx.is_main:  # a plain loss curve next to the checkpoints
                    with open(loss_txt, "a") as f:
                        f.write(f"{step} {loss_avg!r}\n")
                rate = (step - n_last) * cfg["batch_size"] * ctx.dp_size / (time.time() - t_last)
                t_last, n_last = time.time(), step
                for log_scalars in loggers:
                    log_scalars(step, dict(loss=loss_avg, grad_norm=grad_norm, samples_per_s=rate))
                bar.set_postfix(loss=f"{loss_avg:.4f}", epoch=epoch, gnorm=f"{grad_norm:.2f}", samples_s=f"{rate:.1f}",
                                bad_files=dataset.num_skipped, bad_steps=bad_steps)
            bar.update(1)
            if step % cfg["ckpt_every"] == 0 or step == max_steps:
                checkpoint()
            if step >= max_steps:
                break
        else:  # epoch finished
            epoch, start = epoch + 1, 0
    bar.close()
    if cfg["tensorboard"] and ctx.is_main:
        writer.close()

    # ------------------------------------------------------------------------- samples at the end
    if base and (adapters := opt.full("master")) is not None:  # (every rank takes part in the gather; rank 0 writes)
        log(f"adapter: {lora.export(adapters, cfg['lora'], base, os.path.join(run_dir, 'lora'))}")
    ema_sd = ema_state_dict() if cfg["eval_prompts"] and not base else None
    if ctx.is_main and cfg["eval_prompts"]:  # LoRA: the base, the adapters folded into its weights as sample.py does
        ema = build_model(cfg["model"] | ({} if base else dict(from_pretrained=None)), **model_args)
        ema = lora.merge(ema, [dict(path=os.path.join(run_dir, "lora"), scale=1.0)]) if base else ema
        if ema_sd:
            ema.load_state_dict(ema_sd)
        ema = ema.to(device).eval()
        text_encoder = text_encoder or build_text_encoder(cfg["text_encoder"], device=device, dtype=dtype)
        prompts = list(cfg["eval_prompts"])
        for path in sample.generate(cfg, ema, vae, text_encoder, prompts, [cfg["seed"] + k for k in range(len(prompts))],
                                    os.path.join(run_dir, "samples"), device, dtype, dict(weights=dict(run=run_dir,
                                    step=step, ema=not base, base=base))):
            log(path)
    parallel.cleanup()


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    main(sys.argv[1:])
