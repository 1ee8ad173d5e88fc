"""Sample videos from text.

    python sample.py "a red fox in the snow"                          # Open-Sora v1.0 HQ 16x256 weights from the hub
    python sample.py configs/opensora/inference/16x512x512.py --prompt-path prompts.txt   # v1.0's command line
    python sample.py --config configs/shapes.py "a red circle moving right" --seed 1
    torchrun --nproc_per_node 8 sample.py CONFIG --prompt_path prompts.txt   # the prompts split over 8 GPUs
    torchrun --nproc_per_node 2 sample.py CONFIG "a prompt" --sp_size 2      # one video over 2 GPUs (Ulysses)
    python sample.py --from_json samples/a_red_fox-1a2b3c4d-seed42.json     # make a video again from its sidecar
The config comes first or after --config; v1.0's flags work as v1.0 users type them (--ckpt-path, --prompt-path,
--batch-size, --save-dir, --seed, --cfg-scale, --num-sampling-steps; '_' or '-'). Any other --key=value overrides the
config (--scheduler.num_sampling_steps=50, "--image_size=(512, 512)"). A config with a sample_scheduler
(configs/shapes.py) samples with that one (--cfg-scale and --num-sampling-steps set it; --scheduler.* is an error).
The k-th prompt is sampled from seed + k with its own generator: a video depends on its prompt, seed and config only,
not on its neighbours in the batch nor on how many GPUs share the prompts. Writes one mp4 per prompt (a PNG when
num_frames is 1) into save_dir, named from the prompt, a hash of it and the seed, with a JSON sidecar beside it
(prompt, seed, sampler, sizes, dtype, the weights' sha256, the full config, versions, time, memory); an existing file
is never replaced (the new one gets a -2, -3, .. suffix) unless --overwrite. A prompt that starts with '-' goes after
'--':  python sample.py --config configs/shapes.py -- -glitch-art
Stages: all prompts through the text encoder (T5 at v1.0's fp32 on the GPU when it fits, else on the CPU), T5 freed,
the diffusion model over every batch, then the VAE one video at a time (vae.micro_batch_size frames per call).
The config, the weights, the GPU count and save_dir are checked before the VAE and T5 load: a problem is one line.
"""
import argparse
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import time

import torch
from tqdm import tqdm

import lora
import parallel
from checkpoints import load_weights, newest_that_loads, read_weights, resolve_weights, sha256
from config import load_config, validate
from diffusion import build_scheduler
from errors import BadInput, one_line_errors, run_dtype, write_atomic
from model import PixArtMS, build_model
from text import build_text_encoder
from vae import build_vae
from video import write_video

HERE = os.path.dirname(os.path.abspath(__file__))


def video_name(prompt, seed):
    """A slug of the prompt (readable; toy.caption_from_name reads it back) and a hash of all of it (unique: prompts
    that differ only in case, punctuation or non-ASCII letters get different names)."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "video"
    return f"{slug}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}-seed{seed}"


def peak_gib(device):
    """Peak GPU memory since the last call, in GiB (None on the CPU); starts the next stage's count."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def clock(device):
    """Seconds, after the GPU's queued work is done (so a stage's time is its own)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def place_text_encoder(text_encoder, device, log=print):
    """Move the text encoder to the GPU when it fits beside what is already there (T5-XXL in fp32: 18 GiB), else leave
    it on the CPU: slower, but a 16 GB card samples."""
    module = getattr(text_encoder, "model", None)
    if module is None:  # class ids: nothing to move, they are made on the run's device
        text_encoder.device = device
    if module is None or device.type != "cuda":
        return
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    if size + 2**30 < torch.cuda.mem_get_info(device)[0]:  # (encoding a batch of 120 tokens needs far less)
        module.to(device)
    else:
        log(f"text encoder ({size / 2**30:.1f} GiB) does not fit on the GPU beside the models: encoding on the CPU")


@torch.no_grad()
def generate(cfg, model, vae, text_encoder, prompts, seeds, save_dir, device, dtype, meta=None, write=True,
             free_text_encoder=False, progress=True, overwrite=False):
    """Sample prompts[k] from seeds[k] in batches of cfg["batch_size"]; write mp4s (PNGs for one frame) and their JSON
    sidecars; return the paths. Three stages: every prompt through the text encoder (then, if free_text_encoder, T5
    is dropped to make room), every batch through the diffusion model, then the VAE one video at a time. An existing
    file is kept (the new video gets a -2, -3, .. suffix) unless overwrite. write=False: sample, decode and write
    nothing (the other ranks of a sequence-parallel group)."""
    sched_cfg = cfg["sample_scheduler"] or cfg["scheduler"]
    scheduler = build_scheduler(sched_cfg)
    text_encoder.y_embedder = model.y_embedder  # the null caption is the model's learned embedding (v1.0)
    latent_size = vae.get_latent_size((cfg["num_frames"], *cfg["image_size"]))
    extra = dict(data_info=PixArtMS.data_info(cfg["image_size"], device, dtype)) if cfg["multi_resolution"] else {}
    n = cfg["batch_size"]
    batches = [slice(i, i + n) for i in range(0, len(prompts), n)]
    show = progress and len(batches) > 1
    peak_gib(device)
    t0 = clock(device)
    encoded = [{k: v.cpu() for k, v in text_encoder.encode(prompts[b]).items()} for b in batches]  # (CPU: any count)
    stats = dict(text_encoder_s=clock(device) - t0)
    if free_text_encoder and getattr(text_encoder, "model", None) is not None:
        text_encoder.model = None  # encode() is done for this run; null() needs only the model's y_embedder
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    stats["text_encoder_peak_gib"] = peak_gib(device)  # (after freeing T5: the next stage's count starts without it)
    t0 = clock(device)
    latents = []
    for b, enc in zip(tqdm(batches, desc="sampling", disable=not show), encoded):
        generators = [torch.Generator(device).manual_seed(s) for s in seeds[b]]
        enc = {k: v.to(device) for k, v in enc.items()}
        latents += scheduler.sample(model, text_encoder, (vae.out_channels, *latent_size), prompts[b], device, extra,
                                    progress=progress, generators=generators, encoded=enc).unbind()
    stats.update(diffusion_s=clock(device) - t0, diffusion_peak_gib=peak_gib(device))
    paths, seconds = [], 0.0
    for prompt, seed, z in zip(prompts, seeds, latents if write else []):  # decode and write one video at a time
        t0 = clock(device)
        video = vae.decode(z[None].to(dtype)).float().clamp(-1, 1)[0]  # (3, T, H, W)
        seconds += clock(device) - t0
        name, k, ext = video_name(prompt, seed), 1, ".png" if video.shape[1] == 1 else ".mp4"
        path = os.path.join(save_dir, name + ext)
        while path in paths or os.path.exists(path) and not overwrite:
            k += 1
            path = os.path.join(save_dir, f"{name}-{k}{ext}")
        os.makedirs(save_dir, exist_ok=True)
        paths.append(write_video(path, video, cfg["fps"]))
    stats.update(vae_s=seconds, vae_peak_gib=peak_gib(device))
    stats = {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}
    for prompt, seed, path in zip(prompts, seeds, paths):  # the stages' seconds and peaks are the whole run's
        write_json(os.path.splitext(path)[0] + ".json", dict(
            prompt=prompt, seed=seed, sampler=sched_cfg["type"], cfg_scale=scheduler.cfg_scale,
            num_sampling_steps=getattr(scheduler, "num_timesteps", getattr(scheduler, "num_sampling_steps", None)),
            num_frames=cfg["num_frames"], image_size=list(cfg["image_size"]), fps=cfg["fps"],
            dtype=str(dtype).removeprefix("torch."), device=torch.cuda.get_device_name(device)
            if device.type == "cuda" else platform.processor() or "cpu", videos_in_run=len(prompts), **stats,
            **(meta or {}), config=cfg, versions=versions()))
    return paths


def versions():
    found = {"python": platform.python_version()}
    for package in ("torch", "numpy", "transformers", "diffusers", "av", "safetensors"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def write_json(path, obj):
    """Atomically: an interrupted run leaves no half-written sidecar."""
    write_atomic(path, json.dumps(obj, indent=1, default=str))


def tuples(x):
    """JSON's lists back to the tuples a config file writes ((256, 256), patch_size (1, 2, 2))."""
    if isinstance(x, dict):
        return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------- the command line
FLAGS = {  # our name: (v1.0's spelling, type, help); every flag also takes '-' for '_' and '=VALUE' or ' VALUE'
    "config": (None, str, "the config file (default: configs/opensora/inference/16x256x256.py)"),
    "ckpt": ("ckpt-path", str, "model weights: a .pth/.safetensors file, a hub file name or a run folder"),
    "prompt": (None, str, "a prompt (repeatable)"),
    "prompt_path": ("prompt-path", str, "a text file, one prompt per line"),
    "seed": (None, int, "the k-th prompt samples from seed + k"),
    "save_dir": ("save-dir", str, "where the videos and their sidecars go"),
    "batch_size": ("batch-size", int, "prompts sampled together"),
    "num_sampling_steps": ("num-sampling-steps", int, "the sampler's steps"),
    "cfg_scale": ("cfg-scale", float, "classifier-free guidance scale"),
    "sp_size": (None, int, "under torchrun: processes that sample each video together (Ulysses)"),
    "lora": (None, str, "a LoRA folder (train.py's RUN/lora), PATH:SCALE to scale it; repeatable, merged once"),
    "from_json": (None, str, "a sidecar: sample its video again")}


def parse_args(argv):
    """-> (argparse namespace, config overrides). Flags are never abbreviated (allow_abbrev=False: --prompt is not
    --prompt_path); every '--key=value' that is not a flag is an override, spaces and all (argparse alone would take
    "--image_size=(512, 512)" for a prompt); a word that is neither is an error, not a silent prompt."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, exit_on_error=False)
    parser.add_argument("prompts", nargs="*", help="a config file (.py) first if no --config, then text prompts")
    names = set()
    for key, (v1, kind, what) in FLAGS.items():
        spellings = sorted({f"--{key}", f"--{key.replace('_', '-')}"} | ({f"--{v1}"} if v1 else set()))
        names |= set(spellings)
        parser.add_argument(*spellings, dest=key, type=kind, help=what,
                            action="append" if key in ("prompt", "lora") else "store")
    parser.add_argument("--overwrite", action="store_true", help="replace existing videos of the same name")
    names.add("--overwrite")
    cut = argv.index("--") if "--" in argv else len(argv)  # the prompts after '--' may start with '-'
    overrides = [a for a in argv[:cut] if a.startswith("--") and "=" in a and a.split("=")[0] not in names]
    try:
        args, unknown = parser.parse_known_intermixed_args([a for a in argv[:cut] if a not in overrides])
    except argparse.ArgumentError as e:  # a flag's bad value (--seed abc): one line, not the usage text
        raise BadInput(f"sample.py {e} (sample.py --help lists the flags)") from e
    if unknown:
        bad = unknown[0]
        raise BadInput(f"{bad!r} is not a flag of sample.py nor an override --key=value: prompts go before the "
                       f"overrides, and a prompt that starts with '-' after '--' (sample.py ... -- {bad!r})")
    args.prompts += argv[cut + 1:]
    if args.prompts and args.prompts[0].endswith(".py") and args.from_json is None:  # v1.0: the config comes first
        if args.config:
            raise BadInput(f"two configs: {args.prompts[0]!r} and --config {args.config!r}: give one")
        args.config = args.prompts.pop(0)
    return args, overrides


def read_sidecar(args, overrides):
    """--from_json FILE: the config, prompt, seed and weights a video was made with (its sha256 checked)."""
    given = [k for k in ("config", "prompts", "prompt", "prompt_path", "ckpt", "seed", "num_sampling_steps",
                         "cfg_scale", "lora") if getattr(args, k) not in (None, [])]
    if overrides or given:
        raise BadInput(f"--from_json takes the config, prompt, seed, sampler and weights from the file, not "
                       f"{(overrides or given)[0]}: beside it give only --save_dir, --overwrite or --sp_size")
    try:
        with open(args.from_json) as f:
            side = json.load(f)
        cfg, weights = tuples(side["config"]), side["weights"]
        cfg.update(seed=side["seed"], prompt=side["prompt"], prompt_path=None)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"--from_json {args.from_json}: not a sample.py sidecar ({type(e).__name__}: {e})") from e
    cfg["ckpt"] = weights["path"] if os.path.exists(weights["path"]) else weights["name"]
    return cfg, weights["sha256"], side.get("lora", [])


def read_prompts(path, key):
    if path is None:
        return []
    if not os.path.isfile(path):
        raise BadInput(f"{key} {path}: no such file (a text file, one prompt per line)")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main():
    args, overrides = parse_args(sys.argv[1:])
    expected_sha, adapters = None, []
    if args.from_json:
        cfg, expected_sha, adapters = read_sidecar(args, overrides)
        where = args.from_json
    else:
        where = args.config or os.path.join(HERE, "configs/opensora/inference/16x256x256.py")
        cfg = load_config(where, overrides)
    sched = "sample_scheduler" if cfg["sample_scheduler"] else "scheduler"
    if sched == "sample_scheduler" and any(o.startswith(("--scheduler.", "--scheduler=")) for o in overrides):
        raise BadInput(f"{where} samples with sample_scheduler (type {cfg['sample_scheduler'].get('type')!r}), "
                       "not scheduler: override --sample_scheduler.KEY=VALUE instead")
    cfg.update({k: getattr(args, k) for k in ("ckpt", "save_dir", "seed", "batch_size", "sp_size")
                if getattr(args, k) is not None})
    cfg[sched] = dict(cfg[sched], **{k: getattr(args, k) for k in ("num_sampling_steps", "cfg_scale")
                                     if getattr(args, k) is not None})
    validate(cfg, "sample")
    prompts = args.prompts + (args.prompt or []) + read_prompts(args.prompt_path, "--prompt_path")
    if not prompts and cfg["prompt"]:  # the config's prompts only when the command line gives none (as v1.0)
        prompts = [cfg["prompt"]] if isinstance(cfg["prompt"], str) else list(cfg["prompt"])
    if not prompts:
        prompts = read_prompts(cfg["prompt_path"], f"prompt_path in {where}")
    if not prompts:
        raise BadInput("no prompts: give them on the command line, with --prompt or with --prompt_path")
    ctx = parallel.setup(cfg["sp_size"])  # torchrun: the prompts split over the data-parallel ranks
    log = print if ctx.is_main else (lambda *a, **k: None)
    # the weights before the encoders: a failed download or a bad file must not wait until T5-XXL has loaded
    name = cfg["ckpt"] or cfg["model"]["from_pretrained"]
    weights, state = newest_that_loads(resolve_weights(name), read_weights)
    digest = sha256(weights)
    if expected_sha and digest != expected_sha:
        raise BadInput(f"{weights}: sha256 {digest[:12]}.. is not the {expected_sha[:12]}.. of {args.from_json}: "
                       "these are other weights; put the original file at its path")
    meta = dict(weights=dict(name=name, path=os.path.abspath(weights), sha256=digest))
    given = [dict(path=m[1], scale=float(m[2])) if (m := re.fullmatch(r"(.+):([-+]?\d*\.?\d+(e[-+]?\d+)?)", a, re.I))
             else dict(path=a, scale=1.0) for a in args.lora or []]  # PATH or PATH:SCALE
    meta["lora"] = lora.check(adapters or given, state, name)  # (--from_json: their sha256 checked too)

    device = ctx.device
    dtype = run_dtype(cfg["dtype"], device, log)
    vae = build_vae(cfg["vae"], device=device, dtype=dtype)
    text_encoder = build_text_encoder(cfg["text_encoder"], device="cpu")  # v1.0's fp32 unless text_encoder.dtype
    model = build_model(cfg["model"] | dict(from_pretrained=None), input_size=vae.get_latent_size(
        (cfg["num_frames"], *cfg["image_size"])), in_channels=vae.out_channels, caption_channels=text_encoder.output_dim,
        model_max_length=text_encoder.model_max_length, dtype=dtype)
    load_weights(model, state, weights)
    del state
    model = lora.merge(model, meta["lora"])  # in fp32, before the cast: no per-step cost
    model = model.to(device, dtype).eval()
    if ctx.sp_size > 1:
        parallel.enable_sequence_parallel(model, ctx.sp_group)
    elif cfg["compile"] and device.type == "cuda":  # the fast path bench.py measures; CPU runs eager
        torch.backends.cudnn.benchmark = True
        model.compile_blocks()
    place_text_encoder(text_encoder, device, log)  # beside the diffusion model and the VAE, if it fits
    mine = range(ctx.dp_rank, len(prompts), ctx.dp_size)
    for path in generate(cfg, model, vae, text_encoder, [prompts[k] for k in mine], [cfg["seed"] + k for k in mine],
                         cfg["save_dir"], device, dtype, meta, write=ctx.sp_rank == 0, free_text_encoder=True,
                         progress=ctx.is_main, overwrite=args.overwrite):
        print(path)
    parallel.cleanup()


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    main()
