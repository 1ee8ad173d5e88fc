"""Checkpoints in and out: the released weights the configs name (found locally or fetched, converted to our layout),
and our training checkpoints (written atomically, old ones pruned, the newest that loads found in a run folder).

    load_checkpoint(model, "PixArt-XL-2-512x512.pth")   # fetched on first use, converted, loaded
    save_checkpoint(state, "outputs/run/step0001000.pt", keep_last=3)
    path, ckpt = newest_that_loads("outputs/run", read_checkpoint)   # skips (and names) a truncated newest file
Every file is read with torch.load(weights_only=True) or safetensors: tensors and plain containers, never pickled code.
A file that cannot be used raises BadInput naming it and why.
"""
import hashlib
import os
import re
import socket
import sys

import torch

from errors import BadInput, atomic

HUB_FILES = {  # the file names v1.0's configs use -> where they are published: a Hugging Face repo (the same file
    # name, or repo/file when the file is published under another name) or a plain URL
    **dict.fromkeys(["OpenSora-v1-HQ-16x256x256.pth", "OpenSora-v1-HQ-16x512x512.pth", "OpenSora-v1-16x256x256.pth"],
                    "hpcai-tech/Open-Sora"),
    **dict.fromkeys(["PixArt-XL-2-512x512.pth", "PixArt-XL-2-256x256.pth", "PixArt-XL-2-SAM-256x256.pth",
                     "PixArt-XL-2-1024-MS.pth"], "PixArt-alpha/PixArt-alpha"),
    "Latte-XL-2-256x256-ucf101.pt": "maxin-cn/Latte/ucf101.pt",
    **{f"DiT-XL-2-{n}x{n}.pt": f"https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{n}x{n}.pt" for n in (256, 512)}}
# Position tables in a file are dropped: the model computes its own for its size (v1.0's loader drops them too and
# loads non-strict; `temp_embed` is Vchitect/Latte's name for the temporal table)
POS_KEYS = ("pos_embed", "pos_embed_temporal", "pos_embed_spatial", "temp_embed")
# Parts a file may lack (left at init) or have beyond the model (ignored), each as a whole: the temporal branch
# (image weights into a video model), PixArt-1024-MS's size conditioning, and the condition embedder (a class table
# where the model takes captions: v1.0's DiT text config starts from the class-conditional DiT-XL-2-256x256.pt)
OPTIONAL_PARTS = (".attn_temp.", "csize_embedder.", "ar_embedder.", "y_embedder.")
TRAINING_KEYS = ("model", "ema", "optimizer", "step", "epoch", "start", "rng")  # what train.py writes and resumes from


# ----------------------------------------------------------------------------- finding weights
def resolve_weights(name, download=True):
    """An existing local file or folder (also under ./pretrained_models/, where v1.0 keeps them), else a known file
    fetched on first use: from the Hugging Face hub into its cache, or from its URL into ./pretrained_models/
    (download=False: returned as is, only checked to be one)."""
    for path in (name, os.path.join("pretrained_models", name)):
        if os.path.exists(path):
            return path
    base = os.path.basename(name)
    if base not in HUB_FILES:
        raise BadInput(f"model weights {name!r}: no such file or folder" + (
            ": give a weights file or a run folder of train.py" if os.path.dirname(name) else
            f", and not one of the published files {', '.join(HUB_FILES)}: give a weights file, a run folder or one of "
            "them"))
    if not download:
        return name
    source = HUB_FILES[base]
    repo, file = source.rsplit("/", 1) if source.count("/") == 2 else (source, base)  # a hub repo, or repo/file
    url = source if source.startswith("https://") else f"https://huggingface.co/{repo}/resolve/main/{file}"
    try:  # a quick look first: offline, the hub's client retries for half a minute before it gives up
        socket.create_connection((url.split("/")[2], 443), timeout=5).close()
        if source.startswith("https://"):  # torch writes a temporary file and renames it when complete
            os.makedirs("pretrained_models", exist_ok=True)
            torch.hub.download_url_to_file(url, os.path.join("pretrained_models", base))
            return os.path.join("pretrained_models", base)
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo, file)
    except Exception as e:  # offline, network, auth: one line saying what to do instead
        raise BadInput(f"model weights {name!r}: not found locally and the download failed "
                       f"({type(e).__name__}): get {url} and pass its path (sample.py --ckpt-path PATH, train.py "
                       "--model.from_pretrained=PATH)") from e


def checkpoint_files(path):
    """A file -> [path]; a run folder -> its stepNNNNNNN.pt, newest first; anything else -> []."""
    if os.path.isfile(path):
        return [path]
    steps = [f for f in os.listdir(path) if re.fullmatch(r"step\d+\.pt", f)] if os.path.isdir(path) else []
    return [os.path.join(path, f) for f in sorted(steps, key=lambda f: -int(f[4:-3]))]


def newest_that_loads(path, read):
    """(file, read(file)) for the newest of checkpoint_files(path) that read() accepts: each one it refuses with
    BadInput (truncated, empty, of another model, ...) is skipped, saying which and why, and the next older tried."""
    files = checkpoint_files(path)
    if not files:
        raise BadInput(f"{path}: no stepNNNNNNN.pt checkpoint there: give a run folder of train.py or a weights file")
    for i, file in enumerate(files):
        try:
            return file, read(file)
        except BadInput as e:
            if i == len(files) - 1:
                raise BadInput(f"{e}" if len(files) == 1 else f"{path}: none of its {len(files)} checkpoints loads "
                               f"(skipped above; the oldest, {e})") from e
            print(f"checkpoints: skipping {e}; trying {files[i + 1]}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- reading
def sha256(path):
    """A file's sha256 (hex): the sidecars and LoRA checkpoints name the weights by it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_load(path):
    """torch.load with weights_only=True (tensors and plain containers: a pickle that would run code is refused)."""
    if os.path.getsize(path) == 0:
        raise BadInput(f"{path}: empty file (0 bytes; an interrupted copy?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated (RuntimeError), not a torch file (KeyError, ...), pickled code (UnpicklingError)
        if "Weights only load failed" in str(e):
            raise BadInput(f"{path}: holds pickled objects other than tensors (refused: it could run code)") from e
        raise BadInput(f"{path}: cannot be read ({type(e).__name__}: {str(e).split('. ')[0][:120]}; truncated or not "
                       "a checkpoint?)") from e


def read_checkpoint(path):
    """A checkpoint train.py wrote (all of TRAINING_KEYS; fit() checks its model against ours), else BadInput."""
    ckpt = torch_load(path)
    missing = [k for k in TRAINING_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(TRAINING_KEYS)
    if missing or not isinstance(ckpt["model"], dict):
        raise BadInput(f"{path}: not a training checkpoint ({type(ckpt).__name__} without "
                       f"{', '.join(missing)}): --load takes a run folder of train.py or one of its stepNNNNNNN.pt "
                       "(to start from released weights, set --model.from_pretrained)")
    return ckpt


def read_weights(path):
    """The state dict in a weights file: .safetensors, or a torch file holding one as is or under "ema" (our training
    checkpoints hold "model" and "ema"; sampling wants the EMA, as v1.0's loader; Latte's file too), "model" or
    "state_dict" (PixArt-alpha)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # truncated, empty, not safetensors
            raise BadInput(f"{path}: cannot be read as safetensors ({type(e).__name__}: {e})") from e
    sd = torch_load(path)
    if isinstance(sd, dict):
        sd = next((sd[k] for k in ("ema", "model", "state_dict") if isinstance(sd.get(k), dict)), sd)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInput(f"{path}: holds a {type(sd).__name__}, not model weights (a dict of tensors): give a "
                       f"checkpoint of train.py, a released .pth or a .safetensors file")
    return sd


# ----------------------------------------------------------------------------- writing
def save_checkpoint(state, path, keep_last=None):
    """torch.save into a temporary file, then rename it: an interrupted write never replaces a good checkpoint. Then
    keep_last (None: all) prunes the folder's older stepNNNNNNN.pt down to keep_last with this one. Later ones (left by
    a run resumed from an older checkpoint) are not touched: the newest good checkpoint is never deleted."""
    with atomic(path) as tmp:
        torch.save(state, tmp)
    if keep_last:
        step = int(re.fullmatch(r"step(\d+)\.pt", os.path.basename(path))[1])
        older = [f for f in checkpoint_files(os.path.dirname(path) or ".") if int(os.path.basename(f)[4:-3]) < step]
        for f in older[keep_last - 1:]:
            os.remove(f)
    return path


# ----------------------------------------------------------------------------- loading into a model
def load_checkpoint(model, path_or_name):
    """Load weights of any of v1.0's sources into a model of the zoo: Open-Sora v1.0 (.pth), PixArt-alpha (.pth),
    DiT (.pt), Latte (.pt), .safetensors, or our own checkpoints (a file, or a run folder: its newest that loads),
    converted as v1.0 converts them. Expected gaps are printed; anything else is an error naming the keys."""
    path, sd = newest_that_loads(resolve_weights(path_or_name), read_weights)
    load_weights(model, sd, path)


def fit(sd, model, path):
    """sd converted to `model`'s layout -> (sd, notes on the expected gaps); BadInput naming the keys otherwise."""
    sd = dict(sd)
    dropped = [k for k in POS_KEYS if sd.pop(k, None) is not None]
    w = sd.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4:  # DiT/Latte/PixArt-alpha's 2D patch conv (C, C_in, p, p) -> 3D (C, C_in, 1, p, p)
        sd["x_embedder.proj.weight"] = w.unsqueeze(2)
    own = model.state_dict()

    def absent(keys, other):  # the keys of each optional part that `other` wholly lacks
        return [k for p in OPTIONAL_PARTS if not any(p in k and k in other for k in keys) for k in keys if p in k]
    at_init, ignored = absent(own, sd), absent(sd, own)
    bad = {"missing": [k for k in own if k not in sd and k not in POS_KEYS and k not in at_init],
           "unexpected": [k for k in sd if k not in own and k not in ignored],
           "shape mismatch": [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                              for k in sd if k in own and sd[k].shape != own[k].shape]}
    if any(bad.values()):
        listed = "; ".join(f"{what} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
                           for what, keys in bad.items() if keys)
        raise BadInput(f"{path}: foreign key layout for this {type(model).__name__}: {listed}: give weights of this "
                       "model and size")
    parts = lambda keys: ", ".join(sorted({next(p.strip(".") for p in OPTIONAL_PARTS if p in k) for k in keys}))
    notes = (f"; kept the model's own {', '.join(dropped)}" * bool(dropped)
             + f"; {len(at_init)} tensors not in the file, left at init ({parts(at_init)})" * bool(at_init)
             + f"; ignored {len(ignored)} tensors ({parts(ignored)})" * bool(ignored))
    return {k: v for k, v in sd.items() if k not in ignored}, notes


def load_weights(model, sd, path):
    """Load the state dict read from `path` (read_weights) into model, converted and checked by fit()."""
    sd, notes = fit(sd, model, path)
    model.load_state_dict(sd, strict=False)
    print(f"loaded {path}{notes}")
