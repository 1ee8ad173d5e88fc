"""The CPU demo's toy data: coloured shapes crossing the frame on black, with captions ("a red circle moving right"),
and the judge that reads colour and direction back from generated clips (prompt adherence, measured).

    python toy.py shapes data/shapes --num 512          # the toy set: mp4s + data/shapes/train.csv
    python toy.py judge samples/shapes                  # colour / direction accuracy, clean backgrounds
"""
import argparse
import os
import re
import sys

import numpy as np

from data import csv_text, read_csv
from errors import BadInput, one_line_errors, write_atomic
from video import read_video, to_uint8, write_video

def ensure_shapes(cfg):
    """The demo's toy set is written on first use: cfg["make_shapes"] clips and the CSV that data_path names (into a
    new folder or its own only: config.validate refuses a folder holding anything but SHAPES_FILE names)."""
    if cfg["make_shapes"] and not os.path.exists(cfg["data_path"]):
        folder, name = os.path.split(cfg["data_path"])
        make_shapes(folder, cfg["make_shapes"], csv_name=name)



COLOURS = dict(red=(255, 0, 0), green=(0, 255, 0), blue=(0, 0, 255), yellow=(255, 255, 0))
SHAPES = ("circle", "square")
DIRECTIONS = dict(left=(-1, 0), right=(1, 0), up=(0, -1), down=(0, 1))  # (dx, dy), y downwards
SHAPES_PROMPTS = [f"a {c} {s} moving {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS]
SHAPES_FILE = re.compile(r"\d{5}\.mp4(\.tmp\d+)?|.*\.csv\.tmp\d+")  # what make_shapes writes (an interrupted one)


def shape_clip(colour, shape, direction, rng, num_frames=16, size=32):
    """uint8 (T, size, size, 3): one shape of radius (half side) size/8 on black, crossing the frame at constant speed
    from one edge to the other, at a random place across its path (within the middle half of the frame). (With
    random start and end points the CPU demo's directions stayed at chance after 10 minutes.)"""
    r, (dx, dy) = size / 8, DIRECTIONS[direction]
    along = np.linspace(r + 0.5, size - r - 0.5, num_frames)  # a positive direction's path, in frame
    if dx + dy < 0:
        along = size - along
    across = np.full(num_frames, rng.uniform(size / 4, 3 * size / 4))
    cx, cy = (along, across) if dx else (across, along)
    p = np.arange(size) + 0.5  # pixel centres
    ox, oy = p[None, None, :] - cx[:, None, None], p[None, :, None] - cy[:, None, None]  # (T, 1, W), (T, H, 1)
    inside = ox ** 2 + oy ** 2 < r ** 2 if shape == "circle" else np.maximum(abs(ox), abs(oy)) < r  # (T, H, W)
    return inside[..., None] * np.array(COLOURS[colour], dtype=np.uint8)


def make_shapes(out_dir, num, seed=0, num_frames=16, size=32, fps=8, csv_name="train.csv"):
    """Write num toy clips (all 32 captions in turn, random positions and speeds) and out_dir/csv_name (paths relative
    to it, no header); return the CSV's path. For a config's data_path: out_dir = its folder, csv_name = its name."""
    rng, rows = np.random.default_rng(seed), []  # (the folder is made by the first write: errors.atomic)
    for n in range(num):
        caption = SHAPES_PROMPTS[n % len(SHAPES_PROMPTS)]
        _, colour, shape, _, direction = caption.split()
        name = f"{n:05d}.mp4"  # relative to the CSV (data.read_csv)
        write_video(os.path.join(out_dir, name), shape_clip(colour, shape, direction, rng, num_frames, size), fps)
        rows.append((name, caption))
    return write_atomic(os.path.join(out_dir, csv_name), csv_text(rows))


def judge_clip(frames, caption, dark=0.25):
    """Does a clip show the caption's colour and direction, on black? frames: uint8 (T, H, W, 3) or float
    (3, T, H, W) in [-1, 1]. Foreground: pixels whose brightest channel is >= 128. Colour: the pure colour nearest the
    foreground's mean colour (scaled to max 1), not a vote of its pixels, so a mixed blob fails. Direction: the
    dominant axis and sign of the centroid's motion fitted by least squares over the frames that have a foreground
    (none under 1 pixel over the clip), not just the first and last frame. Clean: every pixel more than one pixel (two
    in yuv420p videos) from the foreground has its brightest channel < dark (64 of 255): no speckled or grey
    background."""
    frames = to_uint8(frames).astype(np.float32) / 255
    bright = frames.max(-1)
    fg = bright >= 0.5  # (T, H, W)
    T, H, W = fg.shape
    g = 1 if min(H, W) < 32 else 2  # 32+ pixels are yuv420p (video.py): half-resolution chroma smears edges 2 pixels
    pad = np.pad(fg, ((0, 0), (g, g), (g, g)))
    near = np.any([pad[:, i:i + H, j:j + W] for i in range(2 * g + 1) for j in range(2 * g + 1)], 0)  # fg grown by g
    colour = direction = None
    if fg.any():
        mean = frames[fg].mean(0)
        protos = np.array(list(COLOURS.values()), dtype=np.float32) / 255  # (4, 3)
        colour = list(COLOURS)[((mean / mean.max() - protos) ** 2).sum(-1).argmin()]
    ts = np.flatnonzero(fg.any((1, 2)))
    if len(ts) >= 2:
        n, (ys, xs) = fg[ts].sum((1, 2)), np.mgrid[:H, :W]
        dx, dy = (np.polyfit(ts, (fg[ts] * g).sum((1, 2)) / n, 1)[0] * (T - 1) for g in (xs, ys))
        if max(abs(dx), abs(dy)) >= 1:
            direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    words = caption.lower().split()
    return dict(colour_ok=colour in words, direction_ok=direction in words, clean=bool((bright[~near] < dark).all()),
                colour=colour, direction=direction)


def caption_from_name(path):
    """sample.py's file names: a_red_circle_moving_right-seed0.mp4 -> "a red circle moving right"."""
    return os.path.basename(path).rsplit(".", 1)[0].split("-")[0].replace("_", " ")


def judge_files(target):
    """Judge a CSV's rows, or a folder's mp4s (captions from its train.csv, else from the file names); print the
    failures and the accuracies, return dict(colour=, direction=, both=, clean=, n=)."""
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
    results = [judge_clip(read_video(path), caption) for path, caption in pairs]
    for (path, caption), r in zip(pairs, results):
        if not (r["colour_ok"] and r["direction_ok"] and r["clean"]):
            print(f"{path}: '{caption}' looks {r['colour']} moving {r['direction']}"
                  + ("" if r["clean"] else ", on a speckled background"))
    acc = {k: float(np.mean([r[k + "_ok"] for r in results])) for k in ("colour", "direction")}
    acc["both"] = float(np.mean([r["colour_ok"] and r["direction_ok"] for r in results]))
    acc["clean"] = float(np.mean([r["clean"] for r in results]))
    print(f"{target}: colour {acc['colour']:.1%}  direction {acc['direction']:.1%}  both {acc['both']:.1%}  "
          f"clean background {acc['clean']:.1%}  ({len(results)} clips)")
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
    p = sub.add_parser("judge", help="colour / direction accuracy and clean backgrounds of toy clips")
    p.add_argument("target", help="a folder of mp4s or a CSV")
    args = parser.parse_args()
    if args.command == "shapes":
        print(make_shapes(args.out_dir, args.num, args.seed, args.num_frames, args.size))
    else:
        judge_files(args.target)
