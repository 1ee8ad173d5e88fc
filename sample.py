"""Sample videos from text.

    python sample.py "a red fox in the snow"                          # Open-Sora v1.0 HQ 16x256 weights from the hub
    python sample.py --config configs/opensora/inference/16x512x512.py --prompt_path prompts.txt
    python sample.py --config configs/shapes.py "a red circle moving right" --seed 1
Any other --key=value overrides the config (e.g. --scheduler.num_sampling_steps=50). A config with a
sample_scheduler (configs/shapes.py) samples with that one, so there --scheduler.* is an error: override
--sample_scheduler.* instead. Writes one mp4 per prompt (a PNG when num_frames is 1) into save_dir, named from the
prompt and a hash of it, and prints the paths; an existing file is never replaced (the new one gets a -2, -3, .. suffix) unless --overwrite.
A prompt that starts with '-' goes after '--':  python sample.py --config configs/shapes.py -- -glitch-art
The config, the weights and save_dir are checked before the VAE and T5 load: a problem is one line (exit code 2).
"""
import argparse
import hashlib
import os
import re
import sys

import torch
from tqdm import tqdm

from config import DTYPES, BadInput, load_config, one_line_errors, validate
from data import write_video
from diffusion import build_scheduler
from checkpoints import load_weights, newest_that_loads, read_weights, resolve_weights
from model import PixArtMS, build_model
from text import build_text_encoder
from vae import build_vae


def video_name(prompt, seed):
    """A slug of the prompt (readable; toy.caption_from_name reads it back) and a hash of all of it (unique: prompts
    that differ only in case, punctuation or non-ASCII letters get different names)."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "video"
    return f"{slug}-{hashlib.sha256(prompt.encode()).hexdigest()[:8]}-seed{seed}"


@torch.no_grad()
def generate(cfg, model, vae, text_encoder, prompts, save_dir, seed, device, dtype, progress=True, overwrite=False):
    """Sample `prompts` in batches of cfg["batch_size"], decode, write mp4s (PNGs for one frame); return their paths.
    An existing file is
    kept (the new video gets a -2, -3, .. suffix) unless overwrite; the same prompt twice gets two files."""
    scheduler = build_scheduler(cfg["sample_scheduler"] or cfg["scheduler"])
    text_encoder.y_embedder = model.y_embedder  # the null caption is the model's learned embedding (v1.0)
    latent_size = vae.get_latent_size((cfg["num_frames"], *cfg["image_size"]))
    extra = dict(data_info=PixArtMS.data_info(cfg["image_size"], device, dtype)) if cfg["multi_resolution"] else {}
    os.makedirs(save_dir, exist_ok=True)
    torch.manual_seed(seed)
    paths = []
    batches = range(0, len(prompts), cfg["batch_size"])
    for i in tqdm(batches, desc="batches", disable=not progress or len(batches) == 1):
        batch = prompts[i:i + cfg["batch_size"]]
        z = scheduler.sample(model, text_encoder, (vae.out_channels, *latent_size), batch, device, extra,
                             progress=progress)
        videos = vae.decode(z.to(dtype)).float().clamp(-1, 1)  # (n, 3, T, H, W)
        for prompt, video in zip(batch, videos):
            name, n, ext = video_name(prompt, seed), 1, ".png" if video.shape[1] == 1 else ".mp4"
            path = os.path.join(save_dir, name + ext)
            while path in paths or os.path.exists(path) and not overwrite:
                n += 1
                path = os.path.join(save_dir, f"{name}-{n}{ext}")
            paths.append(write_video(path, video, cfg["fps"]))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*", help="text prompts (or --prompt_path)")
    parser.add_argument("--config", default="configs/opensora/inference/16x256x256.py")
    parser.add_argument("--ckpt", help="model weights: a .pth/.safetensors file, a hub file name, or a run folder")
    parser.add_argument("--prompt_path", help="a text file with one prompt per line")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save_dir")
    parser.add_argument("--overwrite", action="store_true", help="replace existing videos of the same name")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # the prompts after '--' may start with '-'
    args, overrides = parser.parse_known_args(argv[:cut])
    bad = [o for o in overrides if not o.startswith("--")]
    if bad:
        raise BadInput(f"{bad[0]!r} is not a flag of sample.py nor an override --key=value: prompts go before the "
                       f"overrides, and a prompt that starts with '-' after '--' (sample.py ... -- {bad[0]!r})")
    cfg = load_config(args.config, overrides)
    if cfg["sample_scheduler"] and any(o.startswith(("--scheduler.", "--scheduler=")) for o in overrides):
        raise BadInput(f"{args.config} samples with sample_scheduler (type {cfg['sample_scheduler'].get('type')!r}), "
                       "not scheduler: override --sample_scheduler.KEY=VALUE instead")
    cfg.update({k: v for k, v in dict(ckpt=args.ckpt, save_dir=args.save_dir, seed=args.seed).items() if v is not None})
    validate(cfg, "sample")
    prompts = args.prompts + argv[cut + 1:]
    if not prompts and not args.prompt_path and cfg["prompt"]:
        prompts = [cfg["prompt"]] if isinstance(cfg["prompt"], str) else list(cfg["prompt"])
    prompt_path = args.prompt_path or (None if prompts else cfg["prompt_path"])
    if prompt_path:
        with open(prompt_path) as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise BadInput("no prompts: give them on the command line or with --prompt_path")
    # the weights before the encoders: a failed download or a bad file must not wait until T5-XXL has loaded
    weights, state = newest_that_loads(resolve_weights(cfg["ckpt"] or cfg["model"]["from_pretrained"]), read_weights)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[cfg["dtype"]] if device.type == "cuda" else torch.float32
    vae = build_vae(cfg["vae"], device=device, dtype=dtype)
    text_encoder = build_text_encoder(cfg["text_encoder"], device=device, dtype=dtype)
    model = build_model(cfg["model"] | dict(from_pretrained=None), input_size=vae.get_latent_size(
        (cfg["num_frames"], *cfg["image_size"])), in_channels=vae.out_channels, caption_channels=text_encoder.output_dim,
        model_max_length=text_encoder.model_max_length, dtype=dtype)
    load_weights(model, state, weights)
    model = model.to(device, dtype).eval()
    if cfg["compile"] and device.type == "cuda":  # the fast path bench.py measures; CPU runs eager
        torch.backends.cudnn.benchmark = True
        model.compile_blocks()
    for path in generate(cfg, model, vae, text_encoder, prompts, cfg["save_dir"], cfg["seed"], device, dtype,
                         overwrite=args.overwrite):
        print(path)


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    main()
