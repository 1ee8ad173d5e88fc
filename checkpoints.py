"""Checkpoints in and out: the released weights the configs name (found locally or fetched, converted to our layout),
and our training checkpoints (written atomically, old ones pruned, the newest that loads found in a run folder).

    load_checkpoint(model, "PixArt-XL-2-512x512.pth")   # fetched on first use, converted, loaded
    save_checkpoint(state, "outputs/run/step0001000.pt", keep_last=3)
    path, ckpt = newest_that_loads("outputs/run", read_checkpoint)   # skips (and names) a truncated newest file
Every file is read with torch.load(weights_only=True) or safetensors: tensors and plain containers, never pickled code.
A file that cannot be used raises BadInput naming it and why.
"""
import os
import re
import sys

import torch

from config import BadInput

HUB_FILES = {  # file name -> Hugging Face repo
    **dict.fromkeys(["OpenSora-v1-HQ-16x256x256.pth", "OpenSora-v1-HQ-16x512x512.pth", "OpenSora-v1-16x256x256.pth"],
                    "hpcai-tech/Open-Sora"),
    **dict.fromkeys(["PixArt-XL-2-512x512.pth", "PixArt-XL-2-256x256.pth", "PixArt-XL-2-1024-MS.pth"],
                    "PixArt-alpha/PixArt-alpha")}
POS_KEYS = ("pos_embed", "pos_embed_temporal")
PIXART_EXTRA = ("csize_embedder.", "ar_embedder.")  # PixArt-XL-2-1024-MS's size conditioning; STDiT has none
TRAINING_KEYS = ("model", "ema", "optimizer", "step", "epoch", "start", "rng")  # what train.py writes and resumes from


# ----------------------------------------------------------------------------- finding weights
def resolve_weights(name, download=True):
    """An existing local file or folder (also under ./pretrained_models/, where v1.0 keeps them), else a known hub
    file fetched with huggingface_hub into its cache (download=False: returned as is, only checked to be one)."""
    for path in (name, os.path.join("pretrained_models", name)):
        if os.path.exists(path):
            return path
    base = os.path.basename(name)
    if base not in HUB_FILES:
        raise BadInput(f"model weights {name!r}: no such file or folder" + (
            ": give a weights file or a run folder of train.py" if os.path.dirname(name) else
            f", and not one of the hub files {', '.join(HUB_FILES)}: give a weights file, a run folder or one of them"))
    if not download:
        return name
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(HUB_FILES[base], base)
    except Exception as e:  # offline, network, auth: one line saying what to do instead
        url = f"https://huggingface.co/{HUB_FILES[base]}/resolve/main/{base}"
        raise BadInput(f"model weights {name!r}: not found locally and the download failed "
                       f"({type(e).__name__}): get {url} and pass its path") from e


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
    checkpoints hold "model" and "ema"; sampling wants the EMA, as v1.0's loader), "model" or "state_dict" (PixArt)."""
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
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if keep_last:
        step = int(re.fullmatch(r"step(\d+)\.pt", os.path.basename(path))[1])
        older = [f for f in checkpoint_files(os.path.dirname(path) or ".") if int(os.path.basename(f)[4:-3]) < step]
        for f in older[keep_last - 1:]:
            os.remove(f)
    return path


# ----------------------------------------------------------------------------- loading into a model
def load_checkpoint(model, path_or_name):
    """Load Open-Sora v1.0 (.pth), PixArt-alpha (.pth, an image model: no temporal branch), .safetensors, or our own
    checkpoints (a file, or a run folder: its newest that loads). Expected gaps are printed; anything else is an
    error naming the keys."""
    path, sd = newest_that_loads(resolve_weights(path_or_name), read_weights)
    load_weights(model, sd, path)


def fit(sd, model, path):
    """sd converted to `model`'s layout -> (sd, notes on the expected gaps); BadInput naming the keys otherwise."""
    sd = dict(sd)
    # v1.0's loader drops both tables and loads non-strict: the model's own, computed for its size, are kept
    dropped = [k for k in POS_KEYS if sd.pop(k, None) is not None]
    w = sd.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4:  # PixArt-alpha's 2D patch conv (C, C_in, 2, 2) -> 3D (C, C_in, 1, 2, 2)
        sd["x_embedder.proj.weight"] = w.unsqueeze(2)
    own = model.state_dict()
    image_model = not any(".attn_temp." in k for k in sd)  # PixArt-alpha: the temporal branch stays at its init
    missing = [k for k in own if k not in sd and k not in POS_KEYS]
    unexpected = [k for k in sd if k not in own]
    skipped = [k for k in unexpected if image_model and k.startswith(PIXART_EXTRA)]
    temporal = [k for k in missing if image_model and ".attn_temp." in k]
    bad = {"missing": [k for k in missing if k not in temporal],
           "unexpected": [k for k in unexpected if k not in skipped],
           "shape mismatch": [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                              for k in sd if k in own and sd[k].shape != own[k].shape]}
    if any(bad.values()):
        listed = "; ".join(f"{what} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
                           for what, keys in bad.items() if keys)
        raise BadInput(f"{path}: foreign key layout for this STDiT: {listed}: give weights of this model and size")
    for k in skipped:
        del sd[k]
    notes = [f"; kept the model's own {', '.join(dropped)}"] * bool(dropped) + [
        f"; {len(temporal)} temporal-branch (attn_temp) tensors not in the file, left at init"] * bool(temporal)
    return sd, "".join(notes) + f"; ignored {', '.join(skipped)}" * bool(skipped)


def load_weights(model, sd, path):
    """Load the state dict read from `path` (read_weights) into model, converted and checked by fit()."""
    sd, notes = fit(sd, model, path)
    model.load_state_dict(sd, strict=False)
    print(f"loaded {path}{notes}")
