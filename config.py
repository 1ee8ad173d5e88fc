"""Configs are plain Python files of values and dicts, named as in Open-Sora v1.0's configs.

load_config("configs/opensora/train/16x256x256.py", ["--batch_size=4", "--model.depth=2"]) -> dict
Every key must be one of DEFAULTS (an Open-Sora v1.0 config file loads as is); a typo is an error
that names it, in the file or on the command line. A nested override (--model.depth=2) must name a key of
the file's dict or a keyword of the class its `type` names. Override values are parsed as Python literals
and fall back to plain strings (--outputs=runs/a); like nanoGPT's configurator, a value of another type
than the one it replaces is an error (--max_steps=ten), except an int for a float or a bool and None.
"""
import ast
import inspect
import runpy

import torch

DEFAULTS = dict(
    # data
    num_frames=16, frame_interval=3, image_size=(256, 256), root=None, data_path=None,
    use_image_transform=False,  # v1.0's key, accepted and unused: an image row is recognised by its extension
    num_workers=4, cache_dir=None, make_shapes=0,
    cache_windows=1, cache_posterior=False,  # clips per video in the cache, and the posterior's std (prepare.py cache)
    # model and encoders (dicts with a `type`)
    model=None, vae=None, text_encoder=None, scheduler=None, sample_scheduler=None,
    # run
    dtype="bf16", compile=True, grad_checkpoint=False, plugin="zero2", sp_size=1, seed=42, outputs="outputs",
    wandb=False, tensorboard=False, epochs=1000, max_steps=None, log_every=10, ckpt_every=1000,
    load=None, batch_size=8, lr=2e-5, grad_clip=1.0, weight_decay=0.0, ema_decay=0.9999,
    max_bad_steps=10,
    # sampling (prompt, a string or a list, comes before prompt_path as in v1.0)
    fps=8, prompt_path=None, prompt=None, save_dir="samples", ckpt=None, eval_prompts=None,
    multi_resolution=False,  # PixArtMS: the image size and aspect ratio go into the model (v1.0's key)
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # a config's dtype (GPU; CPU: fp32)


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def same_type(old, new):
    """May `new` replace `old`? The same type, None either way, or an int for a float (--lr=1) or for a bool
    (grad_checkpoint is True or a number of blocks)."""
    return old is None or new is None or type(new) is type(old) or (type(new) is int and type(old) in (float, bool))


def keywords(section, kind):
    """The keys config dict `section` may take beyond those its file lists: the keyword arguments of the class its
    `type` names (--model.depth=2 on an STDiT-XL/2 config, whose dict lists no depth)."""
    import diffusion, model, text, vae  # noqa: E401. Here, not at the top: only for a key the file's dict omits
    classes = dict(model={name: cls for name, (cls, _) in model.MODELS.items()}, vae=vae.VAES,
                   text_encoder=text.TEXT_ENCODERS, scheduler=diffusion.SCHEDULERS,
                   sample_scheduler=diffusion.SCHEDULERS)
    cls = classes.get(section, {}).get(kind)
    names = set(inspect.signature(cls).parameters) if cls else set()
    return names | {"type"} | ({"from_pretrained"} if section == "model" else set())  # build_model takes the weights


def load_config(path, overrides=()):
    cfg = dict(DEFAULTS)
    loaded = {k: v for k, v in runpy.run_path(path).items() if not k.startswith("_")}
    loaded = {k: v for k, v in loaded.items() if not callable(v) and not hasattr(v, "__file__")}  # drop imports
    for key, value in loaded.items():
        if key not in DEFAULTS:
            raise KeyError(f"{path}: unknown config key '{key}' (known: {', '.join(sorted(DEFAULTS))})")
        cfg[key] = value
    for arg in overrides:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"override '{arg}' must look like --key=value or --model.depth=2")
        key, value = arg[2:].split("=", 1)
        *parents, leaf = key.split(".")
        node = cfg
        for i, p in enumerate(parents):
            if not isinstance(node.get(p), dict):
                raise KeyError(f"override --{key}: '{'.'.join(parents[:i + 1])}' is not a dict in {path}")
            node[p] = dict(node[p])  # a copy: never mutate the file's dicts
            node = node[p]
        if not parents and leaf not in cfg:
            raise KeyError(f"override --{key}: unknown config key '{leaf}'")
        if parents and leaf not in node and leaf not in keywords(".".join(parents), node.get("type")):
            kind = f" (type {node['type']!r})" if "type" in node else ""
            raise KeyError(f"override --{key}: '{leaf}' is not a key of {'.'.join(parents)}{kind} in {path}")
        new = parse_value(value)
        if not same_type(node.get(leaf), new):
            raise TypeError(f"override --{key}={value}: {type(new).__name__} where {path} has "
                            f"{type(node[leaf]).__name__} {node[leaf]!r}")
        node[leaf] = new
    return cfg
