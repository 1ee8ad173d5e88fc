"""Configs are plain Python files of values and dicts, named as in Open-Sora v1.0's configs.

load_config("configs/opensora/train/16x256x256.py", ["--batch_size=4", "--model.depth=2"]) -> dict
Every key must be one of DEFAULTS (an Open-Sora v1.0 config file loads as is); a typo is an error
that names it, in the file or on the command line. A nested override (--model.depth=2) must name a key of
the file's dict or a keyword of the class its `type` names. Override values are parsed as Python literals
and fall back to plain strings (--outputs=runs/a); like nanoGPT's configurator, a value of another type
than the one it replaces is an error (--max_steps=ten), except an int for a float or a bool and None.

validate(cfg, "train" | "sample" | "cache", run_dir) is the one pass over every rule a run depends on (keys, types,
ranges, shapes, placeholders, files to read, folders to write), before anything is written or loaded. Bad input raises
BadInput: one line naming the key or file, the value and what to do; the entry points print it alone and exit with code
2 (errors.one_line_errors; NANOSORA_DEBUG=1 shows the traceback).
"""
import ast
import difflib
import inspect
import os
import runpy
import tempfile
import traceback

import diffusion
import lora
import model
import stepcache
import text
import toy
import vae
from cache import cache_complete, read_meta
from checkpoints import checkpoint_files, resolve_weights
from errors import DTYPES, BadInput, pick
from parallel import check_sequence_parallel

DEFAULTS = dict(
    # data
    num_frames=16, frame_interval=3, image_size=(256, 256), root=None, data_path=None,
    use_image_transform=False,  # v1.0's key, accepted and unused: an image row is recognised by its extension
    num_workers=4, cache_dir=None, make_shapes=0, shapes_wrap=False,  # the toy set (toy.py), on a torus if wrap
    cache_windows=1, cache_posterior=False,  # clips per video in the cache, and the posterior's std (prepare.py cache)
    # model and encoders (dicts with a `type`)
    model=None, vae=None, text_encoder=None, scheduler=None, sample_scheduler=None,
    # run
    dtype="bf16", compile=True, grad_checkpoint=False, plugin="zero2", sp_size=1, seed=42, outputs="outputs",
    wandb=False, tensorboard=False, epochs=1000, max_steps=None, log_every=10, ckpt_every=1000,
    load=None, batch_size=8, lr=2e-5, grad_clip=1.0, weight_decay=0.0, ema_decay=0.9999,
    max_bad_steps=10, keep_last=None,
    lora=None,  # a dict of lora.DEFAULTS' keys: train LoRA adapters on the frozen model.from_pretrained (lora.py)
    # sampling (prompt, a string or a list, comes before prompt_path as in v1.0)
    fps=8, prompt_path=None, prompt=None, save_dir="samples", ckpt=None, eval_prompts=None,
    multi_resolution=False,  # PixArtMS: the image size and aspect ratio go into the model (v1.0's key)
    cache=None,  # sampling: reuse work across denoising steps, e.g. "pab", "teacache:0.1" (stepcache.py)
    mask_ratios=None,  # v1.1's frame masks in training: {type: ratio}, MASK_TYPES (train.frame_masks)
    reference_path=None, mask_strategy=None, loop=1, condition_frame_length=4,  # v1.1's conditioning (sample.py)
)
MASK_TYPES = ("mask_no", "mask_quarter_random", "mask_quarter_head", "mask_quarter_tail", "mask_quarter_head_tail",
              "mask_image_random", "mask_image_head", "mask_image_tail", "mask_image_head_tail",  # v1.1's nine; and
              "mask_random", "mask_head", "mask_tail", "mask_head_tail")  # v1.1's 16x256x256-mask.py: = the quarter ones

SECTIONS = dict(model=model.MODELS, vae=vae.VAES, text_encoder=text.TEXT_ENCODERS, scheduler=diffusion.SCHEDULERS,
                sample_scheduler=diffusion.SCHEDULERS)  # a config's dicts with a `type` -> its constructors


def same_type(old, new):
    """May `new` replace `old`? The same type, None either way, or an int for a float (--lr=1) or for a bool
    (grad_checkpoint is True or a number of blocks)."""
    return old is None or new is None or type(new) is type(old) or (type(new) is int and type(old) in (float, bool))


def keywords(section, kind):
    """The keys config dict `section` may take beyond those its file lists: the keyword arguments of the constructor
    its `type` names (--model.depth=2 on an STDiT-XL/2 config, whose dict lists no depth)."""
    make = SECTIONS.get(section, {}).get(kind)
    names = set(inspect.signature(make).parameters) if make else set()
    return names | {"type"} | ({"from_pretrained"} if section == "model" else set())  # build_model takes the weights


def unknown(key, known):
    """An unknown key's error message, with the closest known key as a hint."""
    close = difflib.get_close_matches(key, known, 1)
    return f"unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")


def load_config(path, overrides=(), loaded=None):
    """The config file at path (or `loaded`, the config a sidecar read from path holds) and the overrides."""
    if loaded is None and not os.path.isfile(path):
        raise BadInput(f"{path}: no such config file (the ones shipped are in configs/)")
    cfg = dict(DEFAULTS)
    try:
        loaded = {k: v for k, v in runpy.run_path(path).items() if not k.startswith("_")} if loaded is None else loaded
    except SyntaxError as e:
        raise BadInput(f"{path}, line {e.lineno}: {e.msg}: fix the config file") from e
    except Exception as e:  # the file's own code failed (NameError, ...): where, and why
        line = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path][-1:] or ["?"]
        raise BadInput(f"{path}, line {line[0]}: {type(e).__name__}: {e}: fix the config file") from e
    if not isinstance(loaded, dict):
        raise BadInput(f"{path}: its config is a {type(loaded).__name__}, not a dict of config keys")
    loaded = {k: v for k, v in loaded.items() if not callable(v) and not hasattr(v, "__file__")}  # drop imports
    for key, value in loaded.items():
        if key not in DEFAULTS:
            raise BadInput(f"{path}: {unknown(key, DEFAULTS)}: fix or remove it (known keys: config.DEFAULTS)")
        cfg[key] = dict(lora.DEFAULTS, **value) if key == "lora" and isinstance(value, dict) else value
    for arg in overrides:
        if not arg.startswith("--") or "=" not in arg:
            raise BadInput(f"override '{arg}' must look like --key=value or --model.depth=2")
        key, value = arg[2:].split("=", 1)
        *parents, leaf = key.split(".")
        node = cfg
        for i, p in enumerate(parents):
            if node is cfg and p == "lora" and cfg["lora"] is None:  # --lora.r=8 turns LoRA on, the rest as DEFAULTS
                cfg["lora"] = dict(lora.DEFAULTS)
            if not isinstance(node.get(p), dict):
                raise BadInput(f"override --{key}: '{'.'.join(parents[:i + 1])}' is not a dict in {path}")
            node[p] = dict(node[p])  # a copy: never mutate the file's dicts
            node = node[p]
        if not parents and leaf not in cfg:
            raise BadInput(f"override --{key}: {unknown(leaf, DEFAULTS)}")
        if parents and leaf not in node and leaf not in keywords(".".join(parents), node.get("type")):
            kind = f" (type {node['type']!r})" if "type" in node else ""
            raise BadInput(f"override --{key}: '{leaf}' is not a key of {'.'.join(parents)}{kind} in {path}")
        try:
            new = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            new = value  # a plain string: --outputs=runs/a
        if not same_type(node.get(leaf), new):
            kind = type(node[leaf]).__name__
            raise BadInput(f"override --{key}={value}: {type(new).__name__} where {path} has {kind} {node[leaf]!r}: "
                           f"give {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
        node[leaf] = new
    return cfg


# ----------------------------------------------------------------------------- validation
def writable(key, folder):
    """BadInput unless files can be written into `folder` (made later if missing): probed with a temporary file in it
    or its nearest existing parent, so permissions, a read-only disk or a file in the way show up now, not later."""
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        tempfile.TemporaryFile(dir=parent).close()  # (NotADirectoryError if parent is a file)
    except OSError as e:
        raise BadInput(f"{key}={folder!r}: cannot write there ({e.strerror or e}): choose a writable folder") from e


def validate(cfg, command, run_dir=None):
    """Check cfg for `command` ("train", "sample" or "cache"; run_dir: train.py's run folder) before anything is
    written or loaded; the first problem raises BadInput."""
    def need(ok, key, what):
        if not ok:
            *parent, leaf = key.split(".")
            raise BadInput(f"{key}={(cfg[parent[0]] if parent else cfg).get(leaf)!r}: {what}")

    # numbers
    for key in ("num_frames", "frame_interval", "batch_size", "epochs", "log_every", "ckpt_every", "sp_size",
                "max_bad_steps", "num_workers", "make_shapes", "seed"):
        low = 0 if key in ("num_workers", "make_shapes", "seed") else 1
        need(type(cfg[key]) is int and cfg[key] >= low, key, f"give a whole number >= {low}")
    for key, what in (("max_steps", "a number of steps >= 1, or None to train `epochs` epochs"),
                      ("keep_last", "how many checkpoints to keep (>= 1), or None to keep them all")):
        need(cfg[key] is None or type(cfg[key]) is int and cfg[key] >= 1, key, f"give {what}")
    number = lambda v: type(v) in (int, float)  # noqa: E731
    for key in ("lr", "fps"):
        need(number(cfg[key]) and cfg[key] > 0, key, "give a number > 0")
    for key in ("weight_decay", "grad_clip"):
        need(number(cfg[key]) and cfg[key] >= 0 or key == "grad_clip" and cfg[key] is None, key, "give a number >= 0")
    need(number(cfg["ema_decay"]) and 0 <= cfg["ema_decay"] <= 1, "ema_decay", "give a number in [0, 1]")
    size = cfg["image_size"]
    need(type(size) in (tuple, list) and len(size) == 2 and all(type(n) is int and n >= 1 for n in size),
         "image_size", "give (height, width), two whole numbers >= 1")
    need(cfg["dtype"] in DTYPES, "dtype", f"give one of {', '.join(DTYPES)}")
    need(command == "sample" or cfg["plugin"] in ("zero2", "zero2-seq") and (cfg["plugin"] == "zero2") ==
         (cfg["sp_size"] == 1), "plugin", f"with sp_size={cfg['sp_size']}: use plugin='zero2' (ZeRO-2) with sp_size=1, "
         "or plugin='zero2-seq' (ZeRO-2 + Ulysses sequence parallelism) with sp_size > 1")
    a = cfg["lora"]
    need(a is None or isinstance(a, dict) and set(a) == set(lora.DEFAULTS) and type(a["r"]) is int and a["r"] >= 1 and
         number(a["alpha"]) and a["alpha"] > 0 and number(a["dropout"]) and 0 <= a["dropout"] < 1, "lora", "give None "
         f"(full fine-tuning) or a dict of {', '.join(lora.DEFAULTS)}: r >= 1 (whole), alpha > 0, dropout in [0, 1)")
    need(not a or command != "train" or cfg["model"].get("from_pretrained"), "model.from_pretrained", "LoRA adapts "
         "a base: set it to the base weights (a released file or a run folder of train.py)")
    for key in ("eval_prompts", "prompt"):
        prompts = [cfg[key]] if key == "prompt" and isinstance(cfg[key], str) else cfg[key]
        need(prompts is None or type(prompts) in (list, tuple) and all(isinstance(p, str) and p for p in prompts),
             key, "give a list of prompts, or None")

    # the model, encoders and schedulers: a known type and that class's keywords (the builders' own check)
    for section, known in SECTIONS.items():
        if cfg[section] is not None or section != "sample_scheduler":
            pick(known, section, cfg[section], extra=("from_pretrained",) * (section == "model"))
    need(cfg["text_encoder"].get("dtype", "fp32") in ("fp32", "bf16") + ("fp16",) * (cfg["text_encoder"]["type"] != "t5"),
         "text_encoder.dtype", "give 'fp32' (v1.0's), or 'bf16' (half the memory)" +
         " (T5 v1.1 overflows in fp16)" * (cfg["text_encoder"].get("dtype") == "fp16"))
    for section, cls in (("vae", vae.VAES), ("text_encoder", text.TEXT_ENCODERS)):  # v1.0's ./pretrained_models/..
        name, default = cfg[section].get("from_pretrained"), inspect.signature(cls[cfg[section]["type"]]).parameters
        looks_local = isinstance(name, str) and (name.startswith((".", "/", "~")) or name.count("/") > 1)
        hub = f" ({default['from_pretrained'].default}, fetched on first use)" if "from_pretrained" in default else ""
        need(not looks_local or os.path.exists(name), f"{section}.from_pretrained",
             f"no such folder: set --{section}.from_pretrained to a hub id{hub} or a folder holding the weights")
    weights, key = cfg["model"].get("from_pretrained"), "model.from_pretrained"
    if command == "sample":
        weights, key = (cfg["ckpt"], "ckpt") if cfg["ckpt"] else (weights, key)
        need(weights, key, "no model weights: pass --ckpt (a run folder of train.py, a .pth/.safetensors file or a "
                           "hub file name)")
    if weights and command != "cache":
        try:
            local = resolve_weights(weights, download=False)
        except BadInput as e:
            raise BadInput(f"{key}: {e}" + " (or pass --ckpt)" * (key != "ckpt" and command == "sample")) from e
        need(checkpoint_files(local) or not os.path.isdir(local), key, "a folder with no stepNNNNNNN.pt checkpoint: "
             "give a run folder of train.py or a weights file")

    # shapes: (num_frames, *image_size) / the VAE's down-sampling must divide by the model's patch_size
    down = vae.VAES[cfg["vae"]["type"]].down_sampling(cfg["vae"].get("config"))
    patch = model.model_setting(cfg["model"], "patch_size")
    step = tuple(d * p for d, p in zip(down, patch))
    for key, n, k in zip(("num_frames", "image_size", "image_size"), (cfg["num_frames"], *size), step):
        need(n % k == 0, key, f"(T, H, W) must divide by the VAE's down-sampling {tuple(down)} times the model's "
             f"patch_size {tuple(patch)}: pick multiples of {step}")
    ratios, frames = cfg["mask_ratios"], cfg["num_frames"] // down[0]
    if command == "train" and ratios is not None:  # v1.1's frame masks: the same mask to the model and the loss
        need(isinstance(ratios, dict) and set(ratios) <= set(MASK_TYPES) and all(number(r) and 0 <= r <= 1 for r in
             ratios.values()) and abs(sum(ratios.values()) - 1) < 1e-6 and patch[0] == 1 and cfg["sp_size"] == 1 and
             "x_mask" in inspect.signature(model.model_class(cfg["model"]).forward).parameters and frames >= 2,
             "mask_ratios", f"give {{type: ratio}} of {', '.join(MASK_TYPES)}, ratios in [0, 1] summing to 1, "
             "for a model with x_mask (STDiT, PixArt), patch_size (1, p, p), sp_size=1, >= 2 latent frames")
    if cfg["sp_size"] > 1:
        check_sequence_parallel(model.model_class(cfg["model"]), model.model_setting(cfg["model"], "num_heads"),
                                [n // k for n, k in zip((cfg["num_frames"], *size), step)], cfg["sp_size"])

    # files to read, folders to write
    if command in ("train", "cache"):
        path = cfg["data_path"]
        need(isinstance(path, str) and path != "CSV_PATH", "data_path", "set --data_path=FILE.csv, your CSV of "
             "path,caption rows" + " (CSV_PATH is v1.0's placeholder)" * (path == "CSV_PATH"))
        cached = cfg["cache_dir"] and read_meta(cfg) is not None  # (built with other settings: BadInput)
        need(not os.path.isdir(path), "data_path", "a folder: give the CSV file of path,caption rows")
        folder = os.path.dirname(path) or "."
        if not os.path.exists(path) and cfg["make_shapes"]:  # the toy set goes only into its own folder
            others = sorted(f for f in os.listdir(folder) if not toy.SHAPES_FILE.fullmatch(f)) \
                if os.path.isdir(folder) else []
            need(not others, "data_path", f"no such file, and make_shapes={cfg['make_shapes']} writes the toy set only "
                 f"into a new folder or its own, but {folder} holds {', '.join(others[:3])}: fix data_path, or "
                 "--make_shapes=0")
            writable("data_path", folder)
        need(os.path.exists(path) or cfg["make_shapes"] or cached, "data_path", "no such file: give the CSV of "
             "path,caption rows to train on")
        need(command == "train" or cfg["cache_dir"], "cache_dir", "set --cache_dir=FOLDER to encode the data set into")
        if cfg["cache_dir"] and not cache_complete(cfg):
            writable("cache_dir", cfg["cache_dir"])
    if command == "train":
        need(not cfg["load"] or checkpoint_files(cfg["load"]), "load", "no such file, or a folder with no "
             "stepNNNNNNN.pt checkpoint: give a run folder of train.py or one of its checkpoints")
        writable("load" if cfg["load"] else "outputs", run_dir)
        need(cfg["load"] or not checkpoint_files(run_dir), "outputs", f"{run_dir} holds the checkpoints of an earlier "
             f"run: resume it with --load={run_dir}, or set another --outputs")
    if command == "sample":
        writable("save_dir", cfg["save_dir"])
        need(stepcache.settings(cfg["cache"]) is None or hasattr(model.model_class(cfg["model"]), "step_cache"),
             "cache", "caching across steps is for STDiT, PixArt and PixArtMS: use cache=None")
