"""Sample videos from text.

    python sample.py "a red fox in the snow"                          # Open-Sora v1.0 HQ 16x256 weights from the hub
    python sample.py --config configs/opensora/inference/16x512x512.py --prompt_path prompts.txt
    python sample.py --config configs/shapes.py "a red circle moving right" --seed 1
Any other --key=value overrides the config (e.g. --scheduler.num_sampling_steps=50). A config with a
sample_scheduler (configs/shapes.py) samples with that one, so there --scheduler.* is an error: override
--sample_scheduler.* instead. Writes one mp4 per prompt (a PNG when num_frames is 1) into save_dir, named from the
prompt, and prints the paths.
Missing weights (or a failed download) are reported in one line before the VAE and T5 load.
"""
import argparse
import os
import re
import sys

import torch
from tqdm import tqdm

from config import DTYPES, load_config
from data import write_video
from diffusion import build_scheduler
from checkpoints import latest_checkpoint, load_checkpoint, resolve_weights
from model import PixArtMS, build_model
from text import build_text_encoder
from vae import build_vae


def video_name(prompt, seed):
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "video"
    return f"{slug}-seed{seed}"


@torch.no_grad()
def generate(cfg, model, vae, text_encoder, prompts, save_dir, seed, device, dtype, progress=True):
    """Sample `prompts` in batches of cfg["batch_size"], decode, write mp4s (PNGs for one frame); return their paths."""
    scheduler = build_scheduler(cfg["sample_scheduler"] or cfg["scheduler"])
    text_encoder.y_embedder = model.y_embedder  # the null caption is the model's learned embedding (v1.0)
    latent_size = vae.get_latent_size((cfg["num_frames"], *cfg["image_size"]))
    extra = dict(data_info=PixArtMS.data_info(cfg["image_size"], device, dtype)) if cfg["multi_resolution"] else {}
    os.makedirs(save_dir, exist_ok=True)
    torch.manual_seed(seed)
    paths, seen = [], set()
    batches = range(0, len(prompts), cfg["batch_size"])
    for i in tqdm(batches, desc="batches", disable=not progress or len(batches) == 1):
        batch = prompts[i:i + cfg["batch_size"]]
        z = scheduler.sample(model, text_encoder, (vae.out_channels, *latent_size), batch, device, extra,
                             progress=progress)
        videos = vae.decode(z.to(dtype)).float().clamp(-1, 1)  # (n, 3, T, H, W)
        for prompt, video in zip(batch, videos):
            name = video_name(prompt, seed)
            while name in seen:  # the same prompt twice in one call
                name += "_"
            seen.add(name)
            ext = ".png" if video.shape[1] == 1 else ".mp4"
            paths.append(write_video(os.path.join(save_dir, name + ext), video, cfg["fps"]))
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*", help="text prompts (or --prompt_path)")
    parser.add_argument("--config", default="configs/opensora/inference/16x256x256.py")
    parser.add_argument("--ckpt", help="model weights: a .pth/.safetensors file, a hub file name, or a run folder")
    parser.add_argument("--prompt_path", help="a text file with one prompt per line")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save_dir")
    args, overrides = parser.parse_known_args()
    cfg = load_config(args.config, overrides)
    prompts = list(args.prompts)
    if not prompts and not args.prompt_path and cfg["prompt"]:
        prompts = [cfg["prompt"]] if isinstance(cfg["prompt"], str) else list(cfg["prompt"])
    prompt_path = args.prompt_path or (None if prompts else cfg["prompt_path"])
    if prompt_path:
        with open(prompt_path) as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        parser.error("no prompts: give them on the command line or with --prompt_path")
    weights = args.ckpt or cfg["ckpt"] or cfg["model"].get("from_pretrained")
    if not weights:
        parser.error(f"{args.config} names no model weights: pass --ckpt PATH")
    if cfg["sample_scheduler"] and any(o.startswith(("--scheduler.", "--scheduler=")) for o in overrides):
        sys.exit(f"{args.config} samples with sample_scheduler (type {cfg['sample_scheduler'].get('type')!r}), not "
                 "scheduler: override --sample_scheduler.KEY=VALUE instead")
    try:  # the weights first: a missing file or a failed download must not wait until T5-XXL has loaded
        weights = latest_checkpoint(resolve_weights(weights))
    except FileNotFoundError as e:
        sys.exit(f"sample.py: {e} (--ckpt PATH gives the weights)")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[cfg["dtype"]] if device.type == "cuda" else torch.float32
    vae = build_vae(cfg["vae"], device=device, dtype=dtype)
    text_encoder = build_text_encoder(cfg["text_encoder"], device=device, dtype=dtype)
    model = build_model(cfg["model"] | dict(from_pretrained=None), input_size=vae.get_latent_size(
        (cfg["num_frames"], *cfg["image_size"])), in_channels=vae.out_channels, caption_channels=text_encoder.output_dim,
        model_max_length=text_encoder.model_max_length, dtype=dtype)
    load_checkpoint(model, weights)
    model = model.to(device, dtype).eval()
    if cfg["compile"] and device.type == "cuda":  # the fast path bench.py measures; CPU runs eager
        torch.backends.cudnn.benchmark = True
        model.compile_blocks()
    seed = cfg["seed"] if args.seed is None else args.seed
    for path in generate(cfg, model, vae, text_encoder, prompts, args.save_dir or cfg["save_dir"], seed, device, dtype):
        print(path)


if __name__ == "__main__":
    main()
