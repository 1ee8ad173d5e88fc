"""The CPU demo's toy data: coloured shapes crossing the frame on black, with captions ("a red circle moving right"),
and the judge that reads colour and direction back from generated clips (prompt adherence, measured).

    python toy.py shapes data/shapes --num 512          # the toy set: mp4s + data/shapes/train.csv
    python toy.py judge samples/shapes                  # colour / direction accuracy, clean backgrounds
    python toy.py shapes data/shapes_wrap --num 512 --wrap  # on a torus: configs/shapes_mask.py's set
    python toy.py judge samples/mask_loop3 --wrap       # also the start / the joins the sidecars record
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch

from data import csv_text, read_csv
from diffusion import parse_mask_strategy
from errors import BadInput, one_line_errors, write_atomic
from video import read_video, resize_crop, to_uint8, write_video

def ensure_shapes(cfg):
    """The demo's toy set is written on first use: cfg["make_shapes"] clips and the CSV that data_path names (into a
    new folder or its own only: config.validate refuses a folder holding anything but SHAPES_FILE names)."""
    if cfg["make_shapes"] and not os.path.exists(cfg["data_path"]):
        folder, name = os.path.split(cfg["data_path"])
        make_shapes(folder, cfg["make_shapes"], csv_name=name, wrap=cfg["shapes_wrap"])



COLOURS = dict(red=(255, 0, 0), green=(0, 255, 0), blue=(0, 0, 255), yellow=(255, 255, 0))
SHAPES = ("circle", "square")
DIRECTIONS = dict(left=(-1, 0), right=(1, 0), up=(0, -1), down=(0, 1))  # (dx, dy), y downwards
SHAPES_PROMPTS = [f"a {c} {s} moving {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS]
SHAPES_FILE = re.compile(r"\d{5}\.mp4(\.tmp\d+)?|.*\.csv\.tmp\d+")  # what make_shapes writes (an interrupted one)


def shape_clip(colour, shape, direction, rng, num_frames=16, size=32, wrap=False):
    """uint8 (T, size, size, 3): one shape of radius (half side) size/8 on black, crossing the frame at constant speed
    from one edge to the other, at a random place across its path (within the middle half of the frame). (With
    random start and end points the CPU demo's directions stayed at chance after 10 minutes.) wrap: the frame is a
    torus (what leaves one edge comes back at the other) and the shape starts anywhere on its path, at the same
    speed: a world where a clip can go on, for the loops of image-to-video."""
    r, (dx, dy) = size / 8, DIRECTIONS[direction]
    along = np.linspace(r + 0.5, size - r - 0.5, num_frames)  # a positive direction's path, in frame
    if wrap:
        along = (along - along[0] + rng.uniform(0, size)) % size
    if dx + dy < 0:
        along = size - along
    across = np.full(num_frames, rng.uniform(size / 4, 3 * size / 4))
    cx, cy = (along, across) if dx else (across, along)
    p = np.arange(size) + 0.5  # pixel centres
    ox, oy = p[None, None, :] - cx[:, None, None], p[None, :, None] - cy[:, None, None]  # (T, 1, W), (T, H, 1)
    if wrap:  # offsets the short way round the torus
        ox, oy = (ox + size / 2) % size - size / 2, (oy + size / 2) % size - size / 2
    inside = ox ** 2 + oy ** 2 < r ** 2 if shape == "circle" else np.maximum(abs(ox), abs(oy)) < r  # (T, H, W)
    return inside[..., None] * np.array(COLOURS[colour], dtype=np.uint8)


def make_shapes(out_dir, num, seed=0, num_frames=16, size=32, fps=8, csv_name="train.csv", wrap=False):
    """Write num toy clips (all 32 captions in turn, random positions and speeds) and out_dir/csv_name (paths relative
    to it, no header); return the CSV's path. For a config's data_path: out_dir = its folder, csv_name = its name."""
    rng, rows = np.random.default_rng(seed), []  # (the folder is made by the first write: errors.atomic)
    for n in range(num):
        caption = SHAPES_PROMPTS[n % len(SHAPES_PROMPTS)]
        _, colour, shape, _, direction = caption.split()
        name = f"{n:05d}.mp4"  # relative to the CSV (data.read_csv)
        write_video(os.path.join(out_dir, name), shape_clip(colour, shape, direction, rng, num_frames, size, wrap), fps)
        rows.append((name, caption))
    return write_atomic(os.path.join(out_dir, csv_name), csv_text(rows))


def centroids(fg, wrap=False):
    """(T, H, W) bool foreground -> (T, 2) its x, y per frame in pixels (NaN where a frame has none); on a torus
    (wrap) the circular mean, so a shape cut in two by an edge is one shape."""
    T, H, W = fg.shape
    out, n = np.full((T, 2), np.nan), fg.sum((1, 2))
    for i, (g, L) in enumerate(zip(np.mgrid[:H, :W][::-1], (W, H))):
        if wrap:
            a = 2 * np.pi * g / L
            pos = np.arctan2((fg * np.sin(a)).sum((1, 2)), (fg * np.cos(a)).sum((1, 2))) * L / (2 * np.pi) % L
        else:
            pos = (fg * g).sum((1, 2)) / np.maximum(n, 1)
        out[n > 0, i] = pos[n > 0]
    return out


def step(a, b, size, wrap=False):
    """The move from centroid a to b ((..., 2) arrays, size (W, H)): on a torus, the short way round."""
    d = b - a
    return (d + size / 2) % size - size / 2 if wrap else d


def judge_clip(frames, caption, dark=0.25, wrap=False):
    """Does a clip show the caption's colour and direction, on black? frames: uint8 (T, H, W, 3) or float
    (3, T, H, W) in [-1, 1]. Foreground: pixels whose brightest channel is >= 128. Colour: the pure colour nearest the
    foreground's mean colour (scaled to max 1), not a vote of its pixels, so a mixed blob fails. Direction: the
    dominant axis and sign of the centroid's motion fitted by least squares over the frames that have a foreground
    (none under 1 pixel over the clip), not just the first and last frame; on a torus (wrap) the positions are the
    frame-to-frame moves the short way round, added up. Clean: every pixel more than one pixel (two in yuv420p
    videos) from the foreground has its brightest channel < dark (64 of 255): no speckled or grey background."""
    frames = to_uint8(frames).astype(np.float32) / 255
    bright = frames.max(-1)
    fg = bright >= 0.5  # (T, H, W)
    T, H, W = fg.shape
    g = 1 if min(H, W) < 32 else 2  # 32+ pixels are yuv420p (video.py): half-resolution chroma smears edges 2 pixels
    pad = np.pad(fg, ((0, 0), (g, g), (g, g)), mode="wrap" if wrap else "constant")  # (a torus: across the edges)
    near = np.any([pad[:, i:i + H, j:j + W] for i in range(2 * g + 1) for j in range(2 * g + 1)], 0)  # fg grown by g
    colour = direction = None
    if fg.any():
        mean = frames[fg].mean(0)
        protos = np.array(list(COLOURS.values()), dtype=np.float32) / 255  # (4, 3)
        colour = list(COLOURS)[((mean / mean.max() - protos) ** 2).sum(-1).argmin()]
    c = centroids(fg, wrap)
    ts = np.flatnonzero(fg.any((1, 2)))
    if len(ts) >= 2:
        moves = step(c[ts[:-1]], c[ts[1:]], np.array([W, H]), wrap)
        path = np.concatenate([c[ts[:1]], c[ts[0]] + np.cumsum(moves, 0)])  # (len(ts), 2)
        dx, dy = np.polyfit(ts, path, 1)[0] * (T - 1)
        if max(abs(dx), abs(dy)) >= 1:
            direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    words = caption.lower().split()
    return dict(colour_ok=colour in words, direction_ok=direction in words, clean=bool((bright[~near] < dark).all()),
                colour=colour, direction=direction, centroids=c)


def judge_video(path, caption, wrap=False):
    """judge_clip of a video file, and where sample.py's sidecar beside it says the video was conditioned: start_ok
    (image-to-video: the first generated frame's centroid within 1 pixel of the reference's first frame, read and
    resized as sample.py does) and joins_ok (--loop: at each join, where a loop's new frames begin, the centroid does
    not move back against the caption's direction by more than 1 pixel; a frame without a shape fails)."""
    frames = read_video(path)
    r = judge_clip(frames, caption, wrap=wrap)
    side_path = os.path.splitext(path)[0] + ".json"
    if not os.path.exists(side_path):
        return r
    with open(side_path) as f:
        side = json.load(f)
    cfg, c, size = side["config"], r["centroids"], np.array(frames.shape[2:0:-1])
    if side.get("reference_path"):
        ref = torch.from_numpy(read_video(side["reference_path"].split(";")[0])[:1]).permute(0, 3, 1, 2)
        ref = resize_crop(ref, frames.shape[1:3]).permute(0, 2, 3, 1).numpy()
        given = {t for loop, _, _, t0, n, e in parse_mask_strategy(side.get("mask_strategy") or "0") if loop == 0
                 and e == 0 for t in range(t0 % len(frames), t0 % len(frames) + n)}
        first = min(set(range(len(frames))) - given, default=0)
        off = step(centroids(ref.max(-1) >= 128, wrap)[0], c[first], size, wrap)
        r["start_ok"] = bool(np.hypot(*off) <= 1)  # (NaN: no shape in one of them: False)
    if cfg.get("loop", 1) > 1:
        F, C = cfg["num_frames"], cfg["condition_frame_length"]
        d = np.array(next((DIRECTIONS[w] for w in caption.lower().split() if w in DIRECTIONS), (0, 0)))
        back = [float(step(c[j - 1], c[j], size, wrap) @ d) for j in range(F, len(frames), F - C)]
        r["joins_ok"], r["joins"] = bool(all(b >= -1 for b in back)), back  # (NaN >= -1 is False)
    return r


def caption_from_name(path):
    """sample.py's file names: a_red_circle_moving_right-seed0.mp4 -> "a red circle moving right"."""
    return os.path.basename(path).rsplit(".", 1)[0].split("-")[0].replace("_", " ")


def judge_files(target, wrap=False):
    """Judge a CSV's rows, or a folder's mp4s (captions from its train.csv, else from the file names; judge_video: the
    start and the joins where sidecars say so); print the failures and the accuracies, return dict(colour=,
    direction=, both=, clean=, n=, and start=, start_both= / joins=, joins_both= where measured)."""
    if target.endswith(".csv"):
        pairs = read_csv(target)
    else:
        listed = os.path.join(target, "train.csv")
        known = {os.path.basename(p): c for p, c in read_csv(listed)} if os.path.exists(listed) else {}
        names = sorted(n for n in os.listdir(target) if n.endswith(".mp4"))
        pairs = [(os.path.join(target, n), known.get(n, caption_from_name(n))) for n in names]
    pattern = re.compile(r"\b(%s)\b.*\bmoving (%s)\b" % ("|".join(COLOURS), "|".join(DIRECTIONS)))
    pairs = [(p, c) for p, c in pairs if pattern.search(c.lower())]  # toy captions only
    if not pairs:
        raise BadInput(f"{target}: no clips with a toy caption ('a red circle moving right') to judge")
    results = [judge_video(path, caption, wrap) for path, caption in pairs]
    for (path, caption), r in zip(pairs, results):
        if not (r["colour_ok"] and r["direction_ok"] and r["clean"] and r.get("start_ok", 1) and r.get("joins_ok", 1)):
            print(f"{path}: '{caption}' looks {r['colour']} moving {r['direction']}"
                  + ("" if r["clean"] else ", on a speckled background")
                  + ("" if r.get("start_ok", 1) else ", not from the reference's start")
                  + ("" if r.get("joins_ok", 1) else ", moves back at a join: " + ", ".join(
                      f"{b:.1f}" for b in r["joins"]) + " pixels"))
    acc = {k: float(np.mean([r[k + "_ok"] for r in results])) for k in ("colour", "direction")}
    acc["both"] = float(np.mean([r["colour_ok"] and r["direction_ok"] for r in results]))
    acc["clean"] = float(np.mean([r["clean"] for r in results]))
    line = (f"{target}: colour {acc['colour']:.1%}  direction {acc['direction']:.1%}  both {acc['both']:.1%}  "
            f"clean background {acc['clean']:.1%}")
    for k in ("start", "joins"):  # over the clips whose sidecar says so
        judged = [r for r in results if k + "_ok" in r]
        if judged:
            acc[k] = float(np.mean([r[k + "_ok"] for r in judged]))
            acc[k + "_both"] = float(np.mean([r[k + "_ok"] and r["colour_ok"] and r["direction_ok"] for r in judged]))
            line += f"  {k} {acc[k]:.1%}  {k}+both {acc[k + '_both']:.1%}"
    print(f"{line}  ({len(results)} clips)")
    return acc | dict(n=len(results))


# ----------------------------------------------------------------------------- command line
if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    parser = argparse.ArgumentParser(description="toy data and its judge")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("shapes", help="write the moving-shapes toy set")
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, required=True)
    for flag, default in (("--seed", 0), ("--num_frames", 16), ("--size", 32)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--wrap", action="store_true", help="on a torus: shapes go on across the edges (for loops)")
    p = sub.add_parser("judge", help="colour / direction accuracy and clean backgrounds of toy clips")
    p.add_argument("target", help="a folder of mp4s or a CSV")
    p.add_argument("--wrap", action="store_true", help="clips on a torus (toy.py shapes --wrap)")
    args = parser.parse_args()
    if args.command == "shapes":
        print(make_shapes(args.out_dir, args.num, args.seed, args.num_frames, args.size, wrap=args.wrap))
    else:
        judge_files(args.target, args.wrap)
