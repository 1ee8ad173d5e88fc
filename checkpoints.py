"""Checkpoints in and out: the released weights the configs name (found locally or fetched, converted to our layout),
and our training checkpoints (written atomically, the newest found in a run folder).

    load_checkpoint(model, "PixArt-XL-2-512x512.pth")   # fetched on first use, converted, loaded
    save_checkpoint(state, "outputs/run/step0001000.pt") ; latest_checkpoint("outputs/run")
"""
import os
import re

import torch

HUB_FILES = {  # file name -> Hugging Face repo
    **dict.fromkeys(["OpenSora-v1-HQ-16x256x256.pth", "OpenSora-v1-HQ-16x512x512.pth", "OpenSora-v1-16x256x256.pth"],
                    "hpcai-tech/Open-Sora"),
    **dict.fromkeys(["PixArt-XL-2-512x512.pth", "PixArt-XL-2-256x256.pth", "PixArt-XL-2-1024-MS.pth"],
                    "PixArt-alpha/PixArt-alpha")}
POS_KEYS = ("pos_embed", "pos_embed_temporal")
PIXART_EXTRA = ("csize_embedder.", "ar_embedder.")  # PixArt-XL-2-1024-MS's size conditioning; STDiT has none


def resolve_weights(name):
    """An existing local file or folder (also under ./pretrained_models/, where v1.0 keeps them), else a known hub
    file fetched with huggingface_hub into its cache."""
    for path in (name, os.path.join("pretrained_models", name)):
        if os.path.exists(path):
            return path
    base = os.path.basename(name)
    if base not in HUB_FILES:
        raise FileNotFoundError(f"model weights {name!r}: no such file or folder, and not one of the hub files "
                                f"{', '.join(HUB_FILES)}")
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(HUB_FILES[base], base)
    except Exception as e:  # offline, network, auth: one line saying what to do instead
        url = f"https://huggingface.co/{HUB_FILES[base]}/resolve/main/{base}"
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
    """Load Open-Sora v1.0 (.pth), PixArt-alpha (.pth, an image model: no temporal branch), .safetensors, or our own
    checkpoints (a file or a run folder). Expected gaps are printed; anything else is an error naming the keys."""
    path = latest_checkpoint(resolve_weights(path_or_name))
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:  # a wrapped dict: "ema" if present (our training checkpoints hold "model" and "ema"; sampling wants the
        # EMA, as v1.0's loader), else "model", else "state_dict" (PixArt-alpha); otherwise a plain state dict
        sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = next((sd[k] for k in ("ema", "model", "state_dict") if isinstance(sd.get(k), dict)), sd)
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
        raise ValueError(f"{path}: foreign key layout for this STDiT: {listed}")
    for k in skipped:
        del sd[k]
    model.load_state_dict(sd, strict=False)
    notes = [f"; kept the model's own {', '.join(dropped)}"] * bool(dropped) + [
        f"; {len(temporal)} temporal-branch (attn_temp) tensors not in the file, left at init"] * bool(temporal)
    print(f"loaded {path}" + "".join(notes) + f"; ignored {', '.join(skipped)}" * bool(skipped))
