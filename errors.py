"""The ground floor: what every file needs and nothing of ours is imported for. The error type bad input raises, the
hook that prints it as one line, the dtypes a config names, atomic writes, and the check of a config section's `type`
and keywords that config.validate and every builder (build_model, build_vae, ...) share.
"""
import contextlib
import glob
import inspect
import json
import os
import sys
import time

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # a config's dtype (GPU; CPU: fp32)


class BadInput(ValueError):
    """A config value, a data file or a weights file that cannot work: the message is one line naming the key, file or
    line, the value and what to do."""


def one_line_errors(kind, error, tb):
    """sys.excepthook of every command: BadInput and OSError (a missing file, permissions, a full disk) print one line
    and exit with code 2; anything else (a bug), or NANOSORA_DEBUG=1, the usual traceback. Under torchrun the line is
    also written to the error file torchrun names (TORCHELASTIC_ERROR_FILE), so its summary ends with our message."""
    if issubclass(kind, (BadInput, OSError)) and not os.environ.get("NANOSORA_DEBUG"):
        line = one_line(error)
        print(line, file=sys.stderr, flush=True)
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            with contextlib.suppress(OSError):
                with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
                    json.dump(dict(message=line, timestamp=int(time.time())), f)  # torchrun shows a str as is
        raise SystemExit(2)  # raised inside the hook, Python exits with this code (atexit handlers still run)
    sys.__excepthook__(kind, error, tb)


def one_line(error):
    """'error: MESSAGE' on one line (an OSError's type named): what the hook prints and app.py's page shows."""
    return f"error: {'' if isinstance(error, BadInput) else type(error).__name__ + ': '}{' '.join(str(error).split())}"


def run_dtype(name, device, log=print):
    """The precision a run computes in: the config's `dtype` on a GPU, fp32 on the CPU. A GPU without bf16 (before
    Ampere: V100, T4, 2080) runs bf16 configs in fp16, and says so."""
    if device.type != "cuda":
        return torch.float32
    if DTYPES[name] == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] < 8:
        log(f"{torch.cuda.get_device_name(device)} has no bf16: running in fp16 (dtype='fp16')")
        return torch.float16
    return DTYPES[name]


# ----------------------------------------------------------------------------- config sections
def pick(table, section, cfg, extra=()):
    """The class config dict `cfg` of `section` names: its `type` must be a key of `table` (a dict of constructors)
    and every other key a keyword of that constructor (or one of `extra`); BadInput naming the key otherwise."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict) or kind not in table:
        what = f"{section}.type={kind!r}" if isinstance(cfg, dict) else f"{section}={cfg!r}"
        raise BadInput(f"{what}: give {'a dict with a type, ' * (not isinstance(cfg, dict))}one of {', '.join(table)}")
    known = set(inspect.signature(table[kind]).parameters) | set(extra)
    for key in cfg:
        if key != "type" and key not in known:
            raise BadInput(f"{section}.{key}={cfg[key]!r}: not a keyword of {section} type {kind!r}")
    return table[kind]


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic(path):
    """with atomic(path) as tmp: write tmp -> renamed over path when the block ends, removed when it fails: an
    interrupted write never leaves a half file. tmp is `path.tmpPID` (never a .mp4 or .pt: nothing takes it for an
    output), and one left by a killed process (its pid gone) is removed here, the next time the same file is written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for old in glob.glob(glob.escape(path) + ".tmp*"):
        pid = old[len(path) + 4:]
        if pid.isdigit() and not alive(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(old)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_atomic(path, text):
    """Write text to path atomically (see atomic); returns path."""
    with atomic(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
    return path
