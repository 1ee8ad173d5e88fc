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
then batch by batch the diffusion model and the VAE (one video at a time), each video and sidecar written at once:
--skip_existing goes on after a stopped run.
The config, the weights, the GPU count and save_dir are checked before the VAE and T5 load: a problem is one line.
"""
import argparse
import gc
import glob
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
import stepcache
from checkpoints import load_weights, newest_that_loads, read_weights, resolve_weights, sha256
from config import DEFAULTS, load_config, validate
from diffusion import NO_EDIT_RATIOS, apply_mask_strategy, build_scheduler, parse_mask_strategy, randn
from errors import BadInput, one_line_errors, run_dtype, sweep, write_atomic
from model import PixArtMS, build_model
from text import build_text_encoder
from vae import VAES, build_vae
from video import read_video, resize_crop, write_video

HERE = os.path.dirname(os.path.abspath(__file__))


def video_name(prompt, seed):
    """A slug of the prompt (readable; toy.caption_from_name reads it back) and a hash of all of it (unique: prompts
    that differ only in case, punctuation or non-ASCII letters get different names)."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "video"
    return f"{slug}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}-seed{seed}"


def peak_gib(device, before=None):
    """Peak GPU memory since the last call in GiB, or `before` if larger (None on the CPU); starts the next count."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(max(peak, before or 0), 2)


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
             free_text_encoder=False, progress=True, overwrite=False, conditions=None):
    """Sample prompts[k] from seeds[k] in batches of cfg["batch_size"]; write mp4s (PNGs for one frame) and their JSON
    sidecars; return the paths. Every prompt through the text encoder (then, if free_text_encoder, T5 is dropped to
    make room; "cpu": moved there), then batch by batch the diffusion model, and the VAE one video at a time, each
    saved at once. An existing file is kept (the new video gets a -2, -3, .. suffix) unless overwrite. write=False:
    sample, decode and write nothing (the other ranks of a sequence-parallel group). conditions: per prompt
    (reference paths, mask strategy), read_conditions."""
    sched_cfg = cfg["sample_scheduler"] or cfg["scheduler"]
    scheduler = build_scheduler(sched_cfg)
    steps = getattr(scheduler, "num_timesteps", getattr(scheduler, "num_sampling_steps", None))  # model calls a video
    text_encoder.y_embedder = model.y_embedder  # the null caption is the model's learned embedding (v1.0)
    latent_size = vae.get_latent_size((cfg["num_frames"], *cfg["image_size"]))
    extra = dict(data_info=PixArtMS.data_info(cfg["image_size"], device, dtype)) if cfg["multi_resolution"] else {}
    batches = [slice(i, i + cfg["batch_size"]) for i in range(0, len(prompts), cfg["batch_size"])]
    peak_gib(device)
    t0 = clock(device)
    encoded = [{k: v.cpu() for k, v in text_encoder.encode(prompts[b]).items()} for b in batches]  # (CPU: any count)
    stats = dict(text_encoder_s=clock(device) - t0)
    if free_text_encoder and getattr(text_encoder, "model", None) is not None:  # null() needs only the y_embedder
        text_encoder.model = None if free_text_encoder is True else text_encoder.model.cpu()  # "cpu": app.py's next
        gc.collect()
        torch.cuda.empty_cache() if device.type == "cuda" else None
    stats["text_encoder_peak_gib"] = peak_gib(device)  # (after freeing T5: the next stage's count starts without it)
    about = dict(sampler=sched_cfg["type"], cfg_scale=scheduler.cfg_scale, num_sampling_steps=steps,
        cache=stepcache.settings(cfg["cache"]), num_frames=cfg["num_frames"],
        image_size=list(cfg["image_size"]), fps=cfg["fps"], dtype=str(dtype).removeprefix("torch."),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        videos_in_run=len(prompts))
    paths, stats["diffusion_s"], stats["vae_s"] = [], 0.0, 0.0
    for b, enc in zip(tqdm(batches, desc="sampling", disable=not progress or len(batches) == 1), encoded):
        t0 = clock(device)
        generators = [torch.Generator(device).manual_seed(s) for s in seeds[b]]
        enc = {k: v.to(device) for k, v in enc.items()}
        latents = sample_batch(cfg, scheduler, steps, model, vae, text_encoder, (vae.out_channels, *latent_size),
                               prompts[b], conditions and conditions[b], device, dtype, extra, generators, enc, progress)
        stats["diffusion_s"] += clock(device) - t0
        stats["diffusion_peak_gib"] = peak_gib(device, stats.get("diffusion_peak_gib"))
        for k, (prompt, seed, z) in enumerate(zip(prompts[b], seeds[b], latents if write else [])):  # one at a time
            t0 = clock(device)
            video = vae.decode(z[None].to(dtype)).float().clamp(-1, 1)[0]  # (3, T, H, W)
            stats["vae_s"] += clock(device) - t0
            stats["vae_peak_gib"] = peak_gib(device, stats.get("vae_peak_gib"))
            refs = conditions and conditions[b][k]
            refs = dict(reference_path=";".join(refs[0]), references_sha256=[sha256(p) for p in refs[0]],
                        mask_strategy=refs[1]) if refs else {}
            side = dict(**refs, prompt=prompt, seed=seed, **about, **{k: round(v, 3) if isinstance(v, float) else v
                        for k, v in stats.items()}, **(meta or {}), config=cfg, versions=versions())
            paths.append(save(video, side, save_dir, paths, overwrite))
    return paths


def save(video, side, save_dir, taken, overwrite):
    """Write a decoded video (3, T, H, W) and then its sidecar, at once: a run killed later keeps both (the stages'
    seconds and peaks in it are the run's so far). An existing file is kept (a -2, -3, .. suffix) unless overwrite."""
    name, k, ext = video_name(side["prompt"], side["seed"]), 1, ".png" if video.shape[1] == 1 else ".mp4"
    path = os.path.join(save_dir, name + ext)
    while path in taken or os.path.exists(path) and not overwrite:
        k += 1
        path = os.path.join(save_dir, f"{name}-{k}{ext}")
    write_video(path, video, side["fps"])
    write_atomic(os.path.splitext(path)[0] + ".json", json.dumps(side, indent=1, default=str))  # no half-written one
    return path


def read_conditions(cfg, prompts):
    """v1.1's image/video conditioning, checked before any model loads: reference_path and mask_strategy hold one
    entry per prompt (None or '' for none); -> per prompt ([reference paths], strategy), or None if nothing is given."""
    if not cfg["reference_path"] and not cfg["mask_strategy"] and cfg["loop"] == 1:
        return None
    paths, strategies = (list(cfg[k] or [None] * len(prompts)) for k in ("reference_path", "mask_strategy"))
    frames = cfg["num_frames"] // VAES[cfg["vae"]["type"]].down_sampling(cfg["vae"].get("config"))[0]
    if len(paths) != len(prompts) or len(strategies) != len(prompts) or type(cfg["loop"]) is not int or cfg["loop"] < 1 \
            or cfg["loop"] > 1 and not 0 < cfg["condition_frame_length"] < frames:
        raise BadInput(f"give --reference-path and --mask-strategy once per prompt ({len(prompts)}; '' for none), "
                       f"--loop >= 1 and --condition-frame-length in 1..{frames - 1} (latent frames)")
    paths = [[p for p in (path or "").split(";") if p] for path in paths]
    missing = [p for path in paths for p in path if not os.path.isfile(p)]
    if missing:
        raise BadInput(f"--reference-path {missing[0]}: no such file (an image or a video)")
    dpm = (cfg["sample_scheduler"] or cfg["scheduler"])["type"] == "dpm-solver"
    for path, strategy in zip(paths, strategies):  # a bad one: one line, now
        if any(dpm and 0 < e[5] < 1 for e in parse_mask_strategy(strategy, len(path) + cfg["loop"] - 1, frames)):
            raise BadInput(NO_EDIT_RATIOS)
    return [(path, strategy or None) for path, strategy in zip(paths, strategies)]


def encode_references(paths, cfg, vae, device, dtype):
    """Images or videos -> latents (C, T_ref, h, w), every frame resized and cropped to image_size (v1.1)."""
    return [vae.encode((resize_crop(torch.from_numpy(read_video(p)).permute(0, 3, 1, 2), cfg["image_size"]).float()
                        / 127.5 - 1).permute(1, 0, 2, 3)[None].to(device, dtype))[0] for p in paths]


def sample_batch(cfg, scheduler, steps, model, vae, text_encoder, z_size, prompts, conditions, device, dtype, extra,
                 generators, encoded, progress):
    """Latents (n, C, T, h, w) of a batch: from text, or as v1.1's mask strategy says, each prompt's references read,
    resized and cropped to image_size and VAE-encoded; with cfg["loop"] > 1 every loop after the first conditioned on
    the last condition_frame_length latent frames of the one before (v1.1 decodes and re-encodes them; we pass the
    latents), the video being the first loop and the new frames of the others."""
    conditions = conditions or [([], None)] * len(prompts)
    refs = [encode_references(paths, cfg, vae, device, dtype) for paths, _ in conditions]
    strategies, clips, keep = [s for _, s in conditions], [], cfg["condition_frame_length"]
    for loop in range(cfg["loop"]):
        for i in range(len(prompts) if loop else 0):  # v1.1: the loop before's end as a new reference, its first frames
            refs[i].append(clips[-1][i])
            strategies[i] = ";".join(filter(None, [strategies[i], f"{loop},{len(refs[i]) - 1},-{keep},0,{keep}"]))
        z = randn((len(prompts), *z_size), device, generators)  # no strategy: text-to-video (v1.1: a mask of ones)
        mask = apply_mask_strategy(z, refs, strategies, loop) if any(strategies) else None
        with stepcache.attached(model, cfg["cache"], steps):  # None: the exact path
            clips.append(scheduler.sample(model, text_encoder, z_size, prompts, device, extra, progress=progress,
                                          generators=generators, encoded=encoded, z=z, mask=mask))
    return torch.cat([clips[0]] + [c[:, :, keep:] for c in clips[1:]], dim=2)


def versions():  # (all of them are in requirements.txt)
    packages = ("torch", "numpy", "transformers", "diffusers", "av", "safetensors")
    return {"python": platform.python_version(), **{p: importlib.metadata.version(p) for p in packages}}


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
    "cache": (None, str, "reuse work across steps: pab, teacache:0.1, pab:spatial=3 (docs/sampling-cache.md)"),
    "reference_path": ("reference-path", str, "per prompt: images/videos to condition on, ';' between them"),
    "mask_strategy": ("mask-strategy", str, "per prompt: v1.1's loop,ref_id,ref_start,target_start,length,edit_ratio"),
    "loop": (None, int, "long videos: loops, each conditioned on the loop before"),
    "condition_frame_length": ("condition-frame-length", int, "--loop: the latent frames passed on"),
    "lora": (None, str, "a LoRA folder (train.py's RUN/lora), PATH:SCALE to scale it; repeatable, merged once"),
    "from_json": (None, str, "a sidecar: sample its video again")}


def parse_args(argv):
    """-> (argparse namespace, config overrides). Flags are never abbreviated (allow_abbrev=False: --prompt is not
    --prompt_path); every '--key=value' that is not a flag is an override, spaces and all (argparse alone would take
    "--image_size=(512, 512)" for a prompt); a word that is neither is an error, not a silent prompt."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, exit_on_error=False)
    parser.add_argument("prompts", nargs="*", help="a config file (.py) first if no --config, then text prompts")
    for key, (v1, kind, what) in FLAGS.items():
        spellings = sorted({f"--{key}", f"--{key.replace('_', '-')}"} | ({f"--{v1}"} if v1 else set()))
        parser.add_argument(*spellings, dest=key, type=kind, help=what,
                            action="append" if key in ("prompt", "lora") else "store",
                            nargs="+" if key in ("reference_path", "mask_strategy") else None)  # (one per prompt)
    parser.add_argument("--overwrite", action="store_true", help="replace existing videos of the same name")
    parser.add_argument("--skip_existing", "--skip-existing", action="store_true", help="go on after a stopped run: "
                        "make only the videos whose sidecar is not in save_dir")
    cut = argv.index("--") if "--" in argv else len(argv)  # the prompts after '--' may start with '-'
    names = parser._option_string_actions  # every spelling of every flag
    overrides = [a for a in argv[:cut] if a.startswith("--") and "=" in a and a.split("=")[0] not in names]
    try:
        args, unknown = parser.parse_known_intermixed_args([a for a in argv[:cut] if a not in overrides])
    except argparse.ArgumentError as e:  # a flag's bad value (--seed abc): one line, not the usage text
        raise BadInput(f"sample.py {e} (sample.py --help lists the flags)") from e
    if unknown:
        raise BadInput(f"{unknown[0]!r} is not a flag of sample.py nor an override --key=value: prompts go before the "
                       f"overrides, and a prompt that starts with '-' after '--' (sample.py ... -- {unknown[0]!r})")
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
                       f"{(overrides or given)[0]}: beside it give only --save_dir, --overwrite, --sp_size or --cache")
    try:  # its config as a config file's (keys, types, shapes: validate), its own folders never used
        with open(args.from_json) as f:
            side = json.load(f)
        weights = {k: side["weights"][k] for k in ("path", "name", "sha256") if isinstance(side["weights"][k], str)}
        ckpt = weights["path"] if os.path.exists(weights["path"]) else weights["name"]
        config, fields = tuples(side["config"]), dict(seed=side["seed"], prompt=side["prompt"], **{
            k: [side[k]] for k in ("reference_path", "mask_strategy") if side.get(k)})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInput(f"--from_json {args.from_json}: not a sample.py sidecar ({type(e).__name__}: {e})") from e
    cfg = load_config(args.from_json, loaded=config) | fields
    cfg.update(prompt_path=None, ckpt=ckpt, save_dir=DEFAULTS["save_dir"])
    return cfg, weights["sha256"], side.get("lora", [])


def read_prompts(path, key):
    if path is None:
        return []
    if not os.path.isfile(path):
        raise BadInput(f"{key} {path}: no such file (a text file, one prompt per line)")
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise BadInput(f"{key} {path}: not UTF-8 text ({e}): give a text file, one prompt per line") from e


def configure(args, overrides):
    """The parsed command line -> (cfg, where it came from, what the weights must be: the sha256 a sidecar expects and
    the LoRA adapters): every check that needs no model, shared by app.py."""
    where = args.from_json or args.config or os.path.join(HERE, "configs/opensora/inference/16x256x256.py")
    cfg, expected_sha, adapters = read_sidecar(args, overrides) if args.from_json else (
        load_config(where, overrides), None, [])
    sched = "sample_scheduler" if cfg["sample_scheduler"] else "scheduler"
    if sched == "sample_scheduler" and any(o.startswith(("--scheduler.", "--scheduler=")) for o in overrides):
        raise BadInput(f"{where} samples with sample_scheduler (type {cfg['sample_scheduler'].get('type')!r}), "
                       "not scheduler: override --sample_scheduler.KEY=VALUE instead")
    cfg.update({k: getattr(args, k) for k in ("ckpt", "save_dir", "seed", "batch_size", "sp_size", "cache",
                                              "reference_path", "mask_strategy", "loop", "condition_frame_length")
                if getattr(args, k) is not None})
    flags = {k: getattr(args, k) for k in ("num_sampling_steps", "cfg_scale") if getattr(args, k) is not None}
    cfg[sched] = dict(cfg[sched], **flags) if flags and isinstance(cfg[sched], dict) else cfg[sched]
    validate(cfg, "sample")
    sweep(os.path.join(glob.escape(cfg["save_dir"]), "*"))  # the temp files of a killed run
    given = [dict(path=m[1], scale=float(m[2])) if (m := re.fullmatch(r"(.+):([-+]?\d*\.?\d+(e[-+]?\d+)?)", a, re.I))
             else dict(path=a, scale=1.0) for a in args.lora or []]  # PATH or PATH:SCALE
    return cfg, where, dict(sha256=expected_sha, lora=adapters or given)


def build(cfg, ctx, log=print, expected=None, source=None):
    """The weights (checked first: a failed download or a bad file must not wait until T5-XXL has loaded), then the
    VAE, the text encoder and the model -> (model, vae, text_encoder, dtype, meta); app.py builds the same way."""
    name = cfg["ckpt"] or cfg["model"]["from_pretrained"]
    weights, state = newest_that_loads(resolve_weights(name), read_weights)
    digest, expected_sha = sha256(weights), (expected or {}).get("sha256")
    if expected_sha and digest != expected_sha:
        raise BadInput(f"{weights}: sha256 {digest[:12]}.. is not the {expected_sha[:12]}.. of {source}: "
                       "these are other weights; put the original file at its path")
    meta = dict(weights=dict(name=name, path=os.path.abspath(weights), sha256=digest))
    meta["lora"] = lora.check((expected or {}).get("lora", []), state, name)  # (--from_json: their sha256 checked too)
    device, dtype = ctx.device, run_dtype(cfg["dtype"], ctx.device, log)
    vae = build_vae(cfg["vae"], device=device, dtype=dtype)
    text_encoder = build_text_encoder(cfg["text_encoder"], device="cpu")  # v1.0's fp32 unless text_encoder.dtype
    model = build_model(cfg["model"] | dict(from_pretrained=None), input_size=vae.get_latent_size(
        (cfg["num_frames"], *cfg["image_size"])), in_channels=vae.out_channels, caption_channels=text_encoder.output_dim,
        model_max_length=text_encoder.model_max_length, dtype=dtype)
    load_weights(model, state, weights)
    del state
    model = lora.merge(model, meta["lora"]).to(device, dtype).eval()  # merged in fp32, before the cast: no step cost
    if ctx.sp_size > 1:
        parallel.enable_sequence_parallel(model, ctx.sp_group)
    elif cfg["compile"] and device.type == "cuda":  # the fast path bench.py measures; CPU runs eager
        torch.backends.cudnn.benchmark = True
        model.compile_blocks()
    place_text_encoder(text_encoder, device, log)  # beside the diffusion model and the VAE, if it fits
    return model, vae, text_encoder, dtype, meta


def main():
    args, overrides = parse_args(sys.argv[1:])
    cfg, where, expected = configure(args, overrides)
    # the config's prompt, else its prompt_path, only when the command line gives none (as v1.0)
    prompts = (args.prompts + (args.prompt or []) + read_prompts(args.prompt_path, "--prompt_path")
               or ([cfg["prompt"]] if isinstance(cfg["prompt"], str) else list(cfg["prompt"] or []))
               or read_prompts(cfg["prompt_path"], f"prompt_path in {where}"))
    if not prompts:
        raise BadInput("no prompts: give them on the command line, with --prompt or with --prompt_path")
    conditions = read_conditions(cfg, prompts)  # (checked before any model loads)
    ctx = parallel.setup(cfg["sp_size"])  # torchrun: the prompts split over the data-parallel ranks
    log = print if ctx.is_main else (lambda *a, **k: None)
    model, vae, text_encoder, dtype, meta = build(cfg, ctx, log, expected, args.from_json)
    mine = [k for k in range(ctx.dp_rank, len(prompts), ctx.dp_size) if not args.skip_existing or not os.path.exists(
        os.path.join(cfg["save_dir"], video_name(prompts[k], cfg["seed"] + k) + ".json"))]  # (written after its video)
    for path in generate(cfg, model, vae, text_encoder, [prompts[k] for k in mine], [cfg["seed"] + k for k in mine],
                         cfg["save_dir"], ctx.device, dtype, meta, write=ctx.sp_rank == 0, free_text_encoder=True,
                         progress=ctx.is_main, overwrite=args.overwrite or args.skip_existing,
                         conditions=conditions and [conditions[k] for k in mine]):
        print(path)
    parallel.cleanup()


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    main()
