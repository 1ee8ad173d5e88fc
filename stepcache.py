"""Faster sampling without training: reuse work from earlier denoising steps (cfg["cache"], sample.py --cache).

    --cache=pab                     attention broadcast: within the window of steps [start, end) (fractions of the
                                    run) each block computes its spatial / temporal / cross attention every
                                    spatial-th / temporal-th / cross-th step and reuses that output in between
    --cache=pab-fast                pab with longer periods over a wider window (4, 8, 12 steps; 0.1-0.9)
    --cache=pab:spatial=3,cross=8   any knob of a preset, by name
    --cache=teacache:0.1            step residual: while block 0's modulated input has moved (relative L1, summed
                                    since the last full step) less than threshold=0.1, skip all blocks and add the
                                    residual they added at the last full step; the first and last steps always run
None (the default) is the exact path, bit for bit. For the STDiT block family: STDiT, PixArt, PixArtMS (DiT and
Latte: config.validate refuses). The sampler calls the model once per step (guidance is one batched call), so the
model counts steps itself. Measured speed and error: docs/sampling-cache.md.
"""
import ast
import contextlib
import re

import torch

from errors import BadInput
from layers import modulate

PRESETS = {"pab": dict(type="pab", spatial=2, temporal=4, cross=6, start=0.15, end=0.85),
           "pab-fast": dict(type="pab", spatial=4, temporal=8, cross=12, start=0.1, end=0.9),  # the toy keeps its
           "teacache": dict(type="teacache", threshold=0.1)}  # adherence with both pab's (docs/sampling-cache.md)
BRANCHES = ("spatial", "temporal", "cross")
NUMBER = r"-?\d+(\.\d*)?(e-?\d+)?"


def settings(spec):
    """cfg["cache"] -> None or the full knobs of a preset. spec: None (or "None"), a preset name ("pab"), a name and
    the value of its first knob ("teacache:0.1"), or knobs by name ("pab:spatial=3,end=0.9"), or a dict(type=..)."""
    if spec is None or spec == "None":
        return None
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        first, spec = ([k for k in PRESETS.get(name, {}) if k != "type"] or ["value"])[0], dict(type=name)
        for key, eq, value in (item.rpartition("=") for item in rest.split(",") if item):  # a non-number: refused below
            spec[key if eq else first] = ast.literal_eval(value) if re.fullmatch(NUMBER, value) else value
    knobs = dict(PRESETS.get(spec.get("type") if isinstance(spec, dict) else None) or {})
    if not knobs:
        raise BadInput(f"cache={spec!r}: give None or a preset: {', '.join(PRESETS)} (docs/sampling-cache.md)")
    for key, value in spec.items():
        if key not in knobs or key != "type" and type(value) not in (int, float):
            raise BadInput(f"cache.{key}={value!r}: {knobs['type']} takes numbers for {', '.join(list(knobs)[1:])}")
        knobs[key] = knobs[key] if key == "type" else value  # ("pab-fast" is pab with other knobs)
    if not (knobs.get("threshold", 0) >= 0 and 0 <= knobs.get("start", 0) <= knobs.get("end", 1) <= 1 and all(
            type(knobs.get(b, 1)) is int and knobs.get(b, 1) >= 1 for b in BRANCHES)):
        raise BadInput(f"cache={spec!r}: periods are whole numbers >= 1, 0 <= start <= end <= 1, threshold >= 0")
    return knobs


class StepCache:
    """One sampling run's state: the step, which branches reuse their kept output this step (PAB), and block 0's last
    modulated input, the summed change since, and the blocks' last residual (TeaCache)."""

    def __init__(self, knobs, steps):
        # plan (PAB): branch -> True (reuse the kept output) or False (compute and keep it); absent: compute
        self.knobs, self.steps, self.step, self.plan = knobs, steps, -1, {}
        # TeaCache: block 0's last input and the change since; the blocks' last residual; reused: steps skipped
        # (TeaCache) or branch outputs each block reused (PAB)
        self.last, self.moved, self.residual, self.reused = None, 0.0, None, 0

    def begin(self, block, x, t0):
        """The model calls it once a step, before the blocks, on all tokens x (B, T, S, C) (before a sequence-parallel
        split: every rank decides alike); True: skip the blocks (TeaCache)."""
        self.step += 1
        k, i = self.knobs, self.step
        if k["type"] == "pab":
            a, b = round(k["start"] * self.steps), round(k["end"] * self.steps)
            self.plan = {n: (i - a) % k[n] > 0 for n in BRANCHES if a <= i < b}
            self.reused += sum(self.plan.values())
            return False
        m = modulate(block.norm1(x), *block.modulation(t0)[:2])  # what block 0's spatial attention sees
        if self.last is not None:
            self.moved += ((m - self.last).abs().mean() / self.last.abs().mean()).item()
        self.last = m
        skip = 0 < i < self.steps - 1 and self.moved < k["threshold"]
        self.moved, self.reused = self.moved * skip, self.reused + skip  # a full step starts the sum again
        return skip

    def blocks_out(self, x_in, x, skipped):
        """TeaCache: the blocks' output, x_in (B, T, S, C) + the last full step's residual when they were skipped."""
        if skipped:
            return x_in + self.residual
        self.residual = x - x_in
        return x


def branch(block, name, fn, *args):
    """fn(*args), the block's attention branch `name` ("spatial", "temporal", "cross"), or under PAB's plan its output
    kept from an earlier step (then no attention runs at all: under sequence parallelism no all-to-all either)."""
    cache = block.step_cache
    if cache is None or name not in cache.plan:
        return fn(*args)
    if cache.plan[name]:
        return block.kept[name]
    block.kept[name] = out = fn(*args)
    return out


@contextlib.contextmanager
def attached(model, spec, steps):
    """with attached(model, cfg["cache"], steps): sample -- the model and its blocks share one StepCache (None: the
    exact path) for a run of `steps` model calls."""
    knobs = settings(spec)
    if knobs and not hasattr(model, "step_cache"):
        raise BadInput(f"cache: for STDiT, PixArt and PixArtMS, not {type(model).__name__}: use cache=None")
    cache, touched = knobs and StepCache(knobs, steps), (model, *model.blocks) if knobs else ()  # None: untouched
    # compiled blocks: one graph per plan (<= 6 under PAB) and block 0's; a higher limit than torch's 8 keeps them all
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for m in touched:
        m.step_cache, m.kept = cache, {}
    try:
        yield cache
    finally:
        for m in touched:
            m.step_cache, m.kept = None, {}


def psnr(a, b, peak=2.0):
    """PSNR in dB of a against b, values of range `peak` (videos in [-1, 1]); inf when equal."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(peak**2 / mse)).item() if mse else float("inf")
