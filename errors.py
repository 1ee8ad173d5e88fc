"""The ground floor: what every file needs and nothing of ours is imported for. The error type bad input raises, the
hook that prints it as one line, the dtypes a config names, atomic writes, and the check of a config section's `type`
and keywords that config.validate and every builder (build_model, build_vae, ...) share.
"""
import contextlib
import fcntl
import glob
import inspect
import json
import os
import socket
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
            with contextlib.suppress(OSError), open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
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
    output), and one left by a killed process is removed here, the next time the same file is written. Any error the
    write raises (a full disk, a quota, a read-only folder; torch.save's is a RuntimeError) is one line naming the
    file, and the last good one stays."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sweep(glob.escape(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError, UnicodeError) as e:
        raise BadInput(f"{path}: cannot be written ({type(e).__name__}: {e}): check the free space, the permissions "
                       "and the path; the last good one is kept") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sweep(pattern):
    """Remove the temporary files (PATTERN.tmpPID) that processes killed while writing left behind."""
    for old in glob.glob(pattern + ".tmp*"):
        try:
            os.kill(int(old.rsplit(".tmp", 1)[1]), 0)  # its writer is alive (PermissionError: another user's)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(old)
        except (ValueError, PermissionError):
            pass


HELD = {}


def hold(folder):
    """Take `folder` for this process until it exits (an flock on folder/.lock, holding our pid and host): a second
    run on the folder is one line naming the first; a lock left by a killed run is free (the kernel drops it)."""
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BadInput(f"{folder} is in use by another run ({open(f.name).read().strip()}): wait for it to end, stop "
                       "it, or choose another folder") from None
    f.truncate(0)
    print(f"pid {os.getpid()} on host {socket.gethostname()}", file=f, flush=True)
    HELD[folder] = f  # kept open: closing it would drop the lock
    sweep(os.path.join(glob.escape(folder), "*"))  # ours alone now: the temp files in it are leftovers


def write_atomic(path, text):
    """Write text to path atomically (see atomic); returns path."""
    with atomic(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)
    return path
