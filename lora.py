"""LoRA fine-tuning with peft: low-rank adapters on the blocks' linears of a frozen base, trained by train.py, written
in peft's own format (a folder peft.PeftModel.from_pretrained loads), merged into the weights by sample.py.

    lora = dict(r=16, alpha=16, dropout=0.0, target_modules=None)   # a config's key (None: full fine-tuning)
    python train.py configs/16x256.py --lora.r=8 --model.from_pretrained=OpenSora-v1-HQ-16x256x256.pth
    python lora.py outputs/16x256 [FOLDER]        # a LoRA checkpoint (or run folder) -> FOLDER (default: RUN/lora)
    python sample.py CONFIG --lora outputs/16x256/lora:0.7 "a prompt"
peft is imported inside the functions: config.py reads DEFAULTS, and importing peft takes seconds.
"""
import json
import os
import sys

from safetensors.torch import load_file, save_file

from checkpoints import load_weights, newest_that_loads, read_checkpoint, read_weights, resolve_weights, sha256
from errors import BadInput, atomic, one_line_errors, write_atomic

DEFAULTS = dict(r=16, alpha=16, dropout=0.0, target_modules=None)  # None: TARGETS
# The blocks' linears, what PixArt-sigma's and CogVideoX's LoRA trainers adapt: self-attention qkv and proj (STDiT:
# the spatial `attn` and the temporal `attn_temp`), cross-attention q_linear, kv_linear and proj, MLP fc1 and fc2. One
# pattern serves the zoo: PixArt has no attn_temp; DiT and Latte have no cross-attention (Latte's temporal attention is
# its odd blocks' `attn`). Left out for all: the embedders and the final layer (small; they fix the interface to the
# latents and captions the base was trained on), and DiT/Latte's per-block adaLN_modulation (the timestep/class path,
# 6C x C per block, as many weights as the attention; PixArt/STDiT share one t_block, also left frozen).
TARGETS = r"blocks\.\d+\.(attn|attn_temp|cross_attn|mlp)\.(qkv|proj|q_linear|kv_linear|fc1|fc2)"  # peft: full match
PREFIX = "base_model.model."  # what PeftModel puts before the module names in its files


def peft_config(cfg, **more):
    """cfg["lora"] as peft's LoraConfig (more: its other fields)."""
    from peft import LoraConfig
    return LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                      target_modules=cfg["target_modules"] or TARGETS, **more)


def add(model, cfg, base_name=None):
    """Load the base weights `base_name` into model (None: its own are the base, bench.py's random ones), then inject
    cfg's adapters (peft marks only them trainable; B is zero, so the model starts as the base). -> dict(name, sha256)
    of the base file, kept in every checkpoint."""
    from peft import inject_adapter_in_model
    if base_name:
        path, sd = newest_that_loads(resolve_weights(base_name), read_weights)
        load_weights(model, sd, path)
    try:
        inject_adapter_in_model(peft_config(cfg), model)
    except ValueError as e:  # no module matched
        raise BadInput(f"lora.target_modules={cfg['target_modules']!r}: {str(e)[:200]}") from e
    return dict(name=base_name, sha256=sha256(path)) if base_name else None


def export(adapters, cfg, base, folder):
    """Adapters {our parameter name: tensor} -> folder: adapter_config.json, adapter_model.safetensors (peft's names)
    and a README naming the base. Returns folder."""
    config = peft_config(cfg, base_model_name_or_path=base["name"])
    write_atomic(os.path.join(folder, "adapter_config.json"), json.dumps(config.to_dict(), indent=1, default=sorted))
    with atomic(os.path.join(folder, "adapter_model.safetensors")) as tmp:
        save_file({PREFIX + k.replace(".default.", "."): v.detach().float().cpu().contiguous()
                   for k, v in adapters.items()}, tmp, metadata=dict(format="pt"))
    write_atomic(os.path.join(folder, "README.md"), f"LoRA adapter (peft, rank {cfg['r']}, alpha {cfg['alpha']}) of "
                 f"nanoSora for the base weights {base['name']} (sha256 {base['sha256']}).\n")
    return folder


def check(adapters, base_sd, base_name):
    """sample.py's adapters, dict(path, scale[, sha256: a sidecar's]), against the base's state dict before the encoders
    load -> with the file's sha256. BadInput naming adapter and base when a module is missing or of another shape."""
    found = []
    for a in adapters:
        folder, file = a["path"], os.path.join(a["path"], "adapter_model.safetensors")
        digest = sha256(file)  # (a folder without it: FileNotFoundError, one line naming the file)
        if a.get("sha256", digest) != digest:
            raise BadInput(f"--lora {folder}: another adapter than the sidecar's (sha256): put the original back")
        for key, t in load_file(file).items():
            module, part = key.removeprefix(PREFIX).rsplit(".lora_", 1)
            w, dim = base_sd.get(module + ".weight"), int(part.startswith("A"))  # A (r, in), B (out, r)
            if w is None or w.ndim != 2 or w.shape[dim] != t.shape[dim]:
                raise BadInput(f"--lora {folder}: an adapter of another base than {base_name} ({module} "
                               f"{w if w is None else tuple(w.shape)} vs lora_{part} {tuple(t.shape)}): use its base")
        found.append(dict(path=os.path.abspath(folder), sha256=digest, scale=a["scale"]))
    return found


def merge(model, adapters):
    """Fold each adapter, times its scale, into the weights with peft (PeftModel.from_pretrained, merge_and_unload):
    plain Linears again, no per-step cost. adapters: check()'s dicts."""
    from peft import PeftModel
    from peft.helpers import rescale_adapter_scale
    for a in adapters:
        wrapped = PeftModel.from_pretrained(model, a["path"])
        with rescale_adapter_scale(wrapped, a["scale"]):  # (scale 0: W + 0, the base bit for bit)
            model = wrapped.merge_and_unload()
    return model


if __name__ == "__main__":
    sys.excepthook = one_line_errors
    if len(sys.argv) not in (2, 3):
        raise BadInput("usage: python lora.py CHECKPOINT_OR_RUN_FOLDER [OUT_FOLDER]")
    path, ckpt = newest_that_loads(sys.argv[1], read_checkpoint)
    if not ckpt.get("base"):
        raise BadInput(f"{path}: a checkpoint of full training, not of LoRA (no base): nothing to export")
    print(export(ckpt["model"], ckpt["config"]["lora"], ckpt["base"],
                 sys.argv[2] if len(sys.argv) == 3 else os.path.join(os.path.dirname(path), "lora")))
