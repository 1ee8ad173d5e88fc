"""Checkpoints in and out: the released weights the configs name (found locally or fetched, converted to our layout),
and our training checkpoints (written atomically, the newest found in a run folder).

    load_checkpoint(model, "PixArt-XL-2-512x512.pth")   # fetched on first use, converted, loaded
    save_checkpoint(state, "outputs/run/step0001000.pt") ; latest_checkpoint("outputs/run")
"""
import os
import re

import torch

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


def resolve_weights(name):
    """An existing local file or folder (also under ./pretrained_models/, where v1.0 keeps them), else a known file
    fetched on first use: from the Hugging Face hub into its cache, or from its URL into ./pretrained_models/."""
    for path in (name, os.path.join("pretrained_models", name)):
        if os.path.exists(path):
            return path
    base = os.path.basename(name)
    if base not in HUB_FILES:
        raise FileNotFoundError(f"model weights {name!r}: no such file or folder, and not one of the published files "
                                f"{', '.join(HUB_FILES)}")
    source = HUB_FILES[base]
    owner, repo, *file = source.split("/")  # a Hugging Face repo, or repo/file
    repo, file = f"{owner}/{repo}", file[0] if file else base
    url = source if source.startswith("https://") else f"https://huggingface.co/{repo}/resolve/main/{file}"
    try:
        if source.startswith("https://"):  # torch writes a temporary file and renames it when complete
            os.makedirs("pretrained_models", exist_ok=True)
            torch.hub.download_url_to_file(url, os.path.join("pretrained_models", base))
            return os.path.join("pretrained_models", base)
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo, file)
    except Exception as e:  # offline, network, auth: one line saying what to do instead
        raise FileNotFoundError(f"model weights {name!r}: not found locally and the download failed "
                                f"({type(e).__name__}): get {url} and pass its path") from e


def latest_checkpoint(path):
    """A run folder -> its newest stepNNNNNNN.pt; a file is returned as is."""
    if os.path.isfile(path):
        return path
    steps = [f for f in os.listdir(path) if re.fullmatch(r"step\d+\.pt", f)] if os.path.isdir(path) else []
    if not steps:
        raise FileNotFoundError(f"{path}: no stepNNNNNNN.pt checkpoint there")
    return os.path.join(path, max(steps, key=lambda f: int(f[4:-3])))


def save_checkpoint(state, path):
    """torch.save into a temporary file, then rename it: an interrupted write never replaces a good checkpoint."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(model, path_or_name):
    """Load weights of any of v1.0's sources into a model of the zoo: Open-Sora v1.0 (.pth), PixArt-alpha (.pth),
    DiT (.pt), Latte (.pt, its "ema"), .safetensors, or our own checkpoints (a file or a run folder), converted as v1.0
    converts them. Expected gaps are printed; anything else is an error naming the keys."""
    path = latest_checkpoint(resolve_weights(path_or_name))
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:  # a wrapped dict: "ema" if present (our training checkpoints hold "model" and "ema"; sampling wants the
        # EMA, as v1.0's loader; Latte's file too), else "model", else "state_dict" (PixArt-alpha); else a plain dict
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = next((sd[k] for k in ("ema", "model", "state_dict") if isinstance(sd.get(k), dict)), sd)
    sd = dict(sd)
    dropped = [k for k in POS_KEYS if sd.pop(k, None) is not None]
    w = sd.get("x_embedder.proj.weight")
    if w is not None and w.ndim == 4:  # DiT/Latte/PixArt-alpha's 2D patch conv (C, C_in, p, p) -> 3D (C, C_in, 1, p, p)
        sd["x_embedder.proj.weight"] = w.unsqueeze(2)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and k not in POS_KEYS]
    unexpected = [k for k in sd if k not in own]
    at_init, ignored = [], []
    for part in OPTIONAL_PARTS:  # a part wholly absent on one side
        mine, theirs = [k for k in own if part in k], [k for k in sd if part in k]
        if not any(k in sd for k in mine):
            at_init += [k for k in mine if k not in POS_KEYS]
        if not any(k in own for k in theirs):
            ignored += theirs
    bad = {"missing": [k for k in missing if k not in at_init],
           "unexpected": [k for k in unexpected if k not in ignored],
           "shape mismatch": [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                              for k in sd if k in own and sd[k].shape != own[k].shape]}
    if any(bad.values()):
        listed = "; ".join(f"{what} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
                           for what, keys in bad.items() if keys)
        raise ValueError(f"{path}: foreign key layout for this {type(model).__name__}: {listed}")
    model.load_state_dict({k: v for k, v in sd.items() if k not in ignored}, strict=False)
    parts = lambda keys: ", ".join(sorted({next(p.strip(".") for p in OPTIONAL_PARTS if p in k) for k in keys}))
    print(f"loaded {path}" + f"; kept the model's own {', '.join(dropped)}" * bool(dropped)
          + f"; {len(at_init)} tensors not in the file, left at init ({parts(at_init)})" * bool(at_init)
          + f"; ignored {len(ignored)} tensors ({parts(ignored)})" * bool(ignored))
