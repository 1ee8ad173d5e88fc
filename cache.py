"""The latent cache: a data set encoded once (VAE latents and caption embeddings in bf16 shards), so that training
runs no VAE and no text encoder. Its format, its writer (build_cache: `python prepare.py cache CONFIG`, or train.py
finding no complete cache) and its reader (CachedDataset).
"""
import json
import math
import os

import numpy as np
import torch

from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from data import draws, video_dataset
from errors import BadInput, atomic, write_atomic
from text import build_text_encoder
from video import BadSample
from vae import build_vae

# Shard k of cache_dir holds rows [k*SHARD, (k+1)*SHARD) of the CSV (bad rows left out) as safetensors, in bf16:
#   latents, std (n, W, C, T, h, w)  the VAE posterior's mean (and, cache_posterior=True, std) of W = cache_windows
#       clips of each row: the windows and flips online epochs 0..W-1 draw. Epoch e reads clip e % W (for e < W the
#       clip online training sees) and, with the std, a new sample mean + std * noise as online training does;
#   y (kept tokens of all rows, C'), lengths (n,)  caption embeddings of the kept tokens only (T5's mask is a prefix);
#   index (n,) the CSV rows; the captions (JSON) in the metadata.
# Training from it equals training from fp32 values rounded to bf16 (tested). Each torchrun rank encodes shards rank,
# rank + world, ...; a shard appears only by rename, so a re-run resumes. meta.json records the settings; a cache built
# with others is an error, never silently used.
SHARD = 256


def cache_settings(cfg):
    keys = ("data_path", "root", "num_frames", "frame_interval", "image_size", "seed", "vae", "text_encoder",
            "make_shapes", "cache_windows", "cache_posterior")
    return json.loads(json.dumps({k: cfg[k] for k in keys}, default=str))  # tuples -> lists, as in meta.json


def read_meta(cfg):
    """meta.json of cfg's cache, or None if there is none; an error if it was built with other settings."""
    path = os.path.join(cfg["cache_dir"], "meta.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
        settings = meta["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: cut short or not a cache's meta.json ({type(e).__name__}: {e}): delete it and run "
                       "again (prepare.py cache or train.py) to rebuild the cache") from e
    for key, value in cache_settings(cfg).items():
        if settings.get(key) != value:
            raise BadInput(f"{path}: the cache was built with {key}={meta['settings'].get(key)!r}, the config says "
                           f"{value!r}: delete {cfg['cache_dir']} or set another cache_dir")
    return meta


def shard_path(cache_dir, k):
    return os.path.join(cache_dir, f"shard{k:05d}.safetensors")


def whole(path):
    """Is the shard whole: safetensors' open checks that the file is as long as its header says (not cut short, not
    emptied, not missing)?"""
    try:
        with safe_open(path, "pt"):
            return True
    except Exception:  # (safetensors' own error type, OSError, ...)
        return False


def cache_complete(cfg):
    meta = read_meta(cfg)
    return meta is not None and all(whole(shard_path(cfg["cache_dir"], k)) for k in range(meta["shards"]))


class CachedDataset(torch.utils.data.Dataset):
    """A cache written by build_cache: dict(latent=float32 (C, T, h, w), y=bf16 (1, L, C') zero-padded, mask=(L,) int64,
    text=str); no mask for a pooled CLIP caption (y (1, 1, C')) or a class id (y int64). Epoch e (set_epoch) reads
    clip e % cache_windows of each row; with the posterior, latent = mean + std * noise, the noise drawn from (seed,
    epoch, index) like VideoDataset's windows: any worker, a resumed run, alike."""

    def __init__(self, cfg):
        meta = read_meta(cfg)
        paths = [shard_path(cfg["cache_dir"], k) for k in range(meta["shards"])] if meta else [cfg["cache_dir"]]
        bad = [p for p in paths if not whole(p)]
        if bad:  # (train.py rebuilds them itself)
            raise BadInput(f"{bad[0]}: missing, cut short or corrupt ({len(bad)} such): rebuild with python prepare.py "
                           "cache CONFIG")
        self.caption_channels, self.text_tokens = meta["caption_channels"], meta["text_tokens"]
        self.windows, self.rows, self.seed, self.epoch = meta["windows"], [], cfg["seed"], 0
        self.masked = meta["masked"]  # T5 tokens; else a pooled CLIP caption or a class id a row
        for k in range(meta["shards"]):
            with safe_open(shard_path(cfg["cache_dir"], k), "pt") as f:
                if not len(f.get_tensor("index")):
                    continue
                lengths, captions = f.get_tensor("lengths").tolist(), json.loads(f.metadata()["captions"])
            starts = np.cumsum([0] + lengths[:-1]).tolist()
            self.rows += [(k, r, captions[r], starts[r], lengths[r]) for r in range(len(lengths))]
        self.num_skipped = meta["rows"] - len(self.rows)
        if not self.rows:
            raise BadInput(f"{cfg['cache_dir']}: the cache holds no samples")
        self.cache_dir, self.files = cfg["cache_dir"], {}

    def __len__(self):
        return len(self.rows)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, index):
        k, r, text, start, n = self.rows[index]
        if k not in self.files:  # opened lazily, so in each worker (memory-mapped)
            self.files[k] = safe_open(shard_path(self.cache_dir, k), "pt")
        f, w = self.files[k], self.epoch % self.windows
        latent = f.get_slice("latents")[r, w].float()  # (C, T, h, w)
        if "std" in f.keys():
            noise = torch.randn(latent.shape, generator=draws(self.seed, self.epoch, index))
            latent = latent + f.get_slice("std")[r, w].float() * noise
        if not self.masked:  # (1, 1, C') like the CLIP encoder's, or the class id
            y = f.get_slice("y")[start]
            return dict(latent=latent, y=y.view(1, 1, -1) if y.is_floating_point() else y, text=text)
        y = torch.zeros(1, self.text_tokens, self.caption_channels, dtype=torch.bfloat16)
        y[0, :n] = f.get_slice("y")[start:start + n]
        return dict(latent=latent, y=y, mask=(torch.arange(self.text_tokens) < n).long(), text=text)


# ----------------------------------------------------------------------------- writing
def build_cache(cfg, device=None, dtype=torch.float32, rank=0, world_size=1):
    """Encode this rank's shards of cfg's data set into cfg["cache_dir"] (the format: above); shards
    already written are kept (a re-run resumes). cfg["num_workers"] DataLoader workers decode the clips. Returns the
    shard numbers written."""

    dataset, windows = video_dataset(cfg), cfg["cache_windows"]
    vae = build_vae(cfg["vae"], device, dtype)
    text_encoder = build_text_encoder(cfg["text_encoder"], device, dtype)
    cache_dir, shards = cfg["cache_dir"], math.ceil(len(dataset) / SHARD)
    if read_meta(cfg) is None:  # every rank writes the same meta.json
        meta = dict(settings=cache_settings(cfg), shards=shards, rows=len(dataset), windows=windows,
                    caption_channels=text_encoder.output_dim, text_tokens=text_encoder.model_max_length,
                    masked=cfg["text_encoder"]["type"] == "t5")
        write_atomic(os.path.join(cache_dir, "meta.json"), json.dumps(meta, indent=1))

    def clips(rows):  # in a DataLoader worker: [(i, row i's clips of epochs 0..W-1)]; bad rows marked (shared memory)
        out = []
        for i in rows:
            try:
                out.append((i, [dataset.get(i, i, epoch) for epoch in range(windows)]))
            except BadSample as e:
                dataset.mark_bad(i, e)
        return out

    todo = [k for k in range(rank, shards, world_size) if not whole(shard_path(cache_dir, k))]  # (a bad one again)
    for k in tqdm(todo, desc=f"caching {cfg['data_path']}", dynamic_ncols=True, disable=rank != 0):
        rows = [i for i in range(k * SHARD, min((k + 1) * SHARD, len(dataset))) if not dataset.bad[i]]
        index, texts, parts = [], [], []
        for good in torch.utils.data.DataLoader(rows, batch_size=max(1, cfg["batch_size"] // windows),
                                                 num_workers=cfg["num_workers"], collate_fn=clips):
            if not good:  # (clips left out the bad rows: here all of them)
                continue
            index += [i for i, _ in good]
            texts += [views[0]["text"] for _, views in good]
            x = torch.stack([s["video"] for _, views in good for s in views]).to(device, dtype)  # (B*W, 3, T, H, W)
            mean, std = (t.unflatten(0, (len(good), windows)) for t in vae.posterior(x))  # (B, W, C, T, h, w) each
            text = text_encoder.encode([views[0]["text"] for _, views in good])
            if "mask" in text:  # T5 tokens: the kept ones only
                lengths = text["mask"].sum(1)
                if (text["mask"].int().diff(dim=1) > 0).any():  # a 1 after a 0
                    raise ValueError("the text encoder's mask is not a prefix of ones: the cache cannot drop padding")
                y = torch.cat([y[0, :n] for y, n in zip(text["y"], lengths.tolist())])  # (kept tokens, C')
            else:  # CLIP's one pooled vector (B, 1, 1, C') or class ids (B,): one row each
                y, lengths = text["y"].flatten(1) if text["y"].ndim > 1 else text["y"], torch.ones(len(good), dtype=int)
            parts.append(dict(latents=mean.bfloat16().cpu(), std=std.bfloat16().cpu(),
                              y=(y.bfloat16() if y.is_floating_point() else y).cpu(), lengths=lengths.cpu()))
        out = dict(index=torch.tensor(index, dtype=torch.int64))
        if parts:  # an all-bad shard holds only its index
            out |= {n: torch.cat([p[n] for p in parts]) for n in parts[0] if n != "std" or cfg["cache_posterior"]}
        with atomic(shard_path(cache_dir, k)) as tmp:
            save_file({n: t.contiguous() for n, t in out.items()}, tmp, metadata=dict(captions=json.dumps(texts)))
    return todo


def cache_bytes(latent_shape, tokens, caption_channels, windows=1, posterior=False):
    """Bytes a cached row takes in its shard, tensors only: bf16 latents (C, T, h, w) x windows (x2 with the std),
    `tokens` kept caption tokens of caption_channels, its length and index (docs/data-loading.md's cache table)."""
    return 2 * math.prod(latent_shape) * windows * (1 + posterior) + 2 * tokens * caption_channels + 16
