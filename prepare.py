"""Data preparation: a folder of videos -> the CSV train.py reads (checked, filtered, optionally cut at scene changes),
and the latent cache.

    python prepare.py folder videos/ raw.csv                 # captions from videos/x.txt beside videos/x.mp4
    python prepare.py folder videos/ raw.csv --captions captions.csv   # or joined from a path,caption CSV
    python prepare.py scenes raw.csv clips/ clips.csv        # cut at scene changes (pip install scenedetect)
    python prepare.py check clips.csv good.csv               # decode every row: good.csv + good_bad.csv (reasons)
    python prepare.py filter good.csv train.csv --fmin 48 --remove_empty_caption --remove_caption_prefix
    python prepare.py cache configs/opensora/train/16x256x256.py --data_path=train.csv --cache_dir=cache  # or torchrun

CSV rows are Open-Sora v1.0's, no header: path,caption,num_frames,fps,height,width (v1.0's tools read num_frames as
the third column; train.py reads the first two). folder, scenes and check run a pool of --workers processes with a
progress bar, record each finished row in OUT.partial as they go (a re-run skips those: it resumes), and write OUT
(and OUT's _bad.csv report: path,reason per bad row) only at the end, through a temporary file renamed. A relative
video path in a CSV is relative to the CSV's folder, as train.py reads it (data.video_path); OUT's paths are absolute.
"""
import argparse
import contextlib
import csv
import importlib.util
import json
import multiprocessing
import os
import sys

import av
import torch

import data
import toy
import video
from cache import CachedDataset, build_cache
from config import load_config, validate
from errors import BadInput, one_line_errors, write_atomic

VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
CAPTION_PREFIXES = ("The video shows", "The video captures", "The video features", "The video depicts",
                    "The video presents", "The video is ", "In the video,")  # LLaVA's openings (v1.0's csvutil list)


# ----------------------------------------------------------------------------- rows in, rows out, resumably
def read_rows(path):
    """The rows of a CSV (lists of strings; blank lines dropped)."""
    try:
        with open(path, newline="") as f:
            return [row for row in csv.reader(f) if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadInput(f"{path}: not a CSV of UTF-8 text ({e}): give the path,caption CSV") from e


def absolute(rows, src):
    """rows of the CSV src, their video (the first column) an absolute path: a relative one is relative to src's
    folder, as train.py reads it (data.video_path), whatever the current folder."""
    return [[os.path.abspath(data.video_path(src, row[0]))] + row[1:] for row in rows]


def bad_path(out):
    return os.path.splitext(out)[0] + "_bad.csv"


def run_pool(fn, items, out, workers, desc):
    """[result for item in items] where fn(item) = (item, result), computed by `workers` processes; each is appended to
    OUT.partial as it comes, so an interrupted run loses nothing and a re-run computes only the items missing there.
    Returns the results and the journal's path (removed by finish)."""
    from tqdm import tqdm

    journal, done = out + ".partial", {}
    if os.path.exists(journal):
        with open(journal) as f:
            for line in f:
                with contextlib.suppress(ValueError):  # the line an interruption cut short: that item runs again
                    item, result = json.loads(line)
                    done[json.dumps(item)] = result
    todo = [item for item in items if json.dumps(item) not in done]
    if done:
        print(f"{journal}: resuming, {len(items) - len(todo)} of {len(items)} rows already done")
    # forkserver, not fork: a worker forked from a process with threads (torch's, tqdm's monitor) can deadlock; with
    # fork the test suite once hung in the pool's terminate() after a worker's error
    with multiprocessing.get_context("forkserver").Pool(workers) as pool, open(journal, "a") as f:
        for item, result in tqdm(pool.imap_unordered(fn, todo), total=len(todo), desc=desc, dynamic_ncols=True):
            done[json.dumps(item)] = result
            f.write(json.dumps([item, result]) + "\n")
            f.flush()
    return [done[json.dumps(item)] for item in items], journal


def finish(out, good, bad, journal=None):
    """Write the good rows to out and the bad (path, reason) rows to its _bad.csv report, atomically; then print one
    line per bad row and a summary."""
    write_atomic(out, data.csv_text(good))
    if bad or os.path.exists(bad_path(out)):
        write_atomic(bad_path(out), data.csv_text(bad))
    if journal and os.path.exists(journal):
        os.remove(journal)
    for path, reason in bad:
        print(f"bad: {path}: {reason}", file=sys.stderr)
    print(f"{out}: {len(good)} rows" + (f"; {len(bad)} bad, listed in {bad_path(out)}" if bad else ""))


def describe(path):
    """(path, [num_frames, fps, height, width]) from the container's header (num_frames: the count video.decode uses),
    or (path, the reason it cannot be read)."""
    if video.not_a_file(path):
        return path, video.not_a_file(path)
    try:
        total = 1 if path.lower().endswith(video.IMAGE_EXTS) else video.frame_timing(path)[0]
        container, stream = video.open_video(path)
        with container:
            return path, [total, f"{float(stream.average_rate or 0):.6g}", stream.height, stream.width]
    except (video.BadSample, av.FFmpegError, OSError) as e:
        return path, f"unreadable: {type(e).__name__}: {e}"


def check_row(row):
    """Decode every frame of row[0]: (row, [num_frames, fps, height, width]) or (row, the reason it is bad)."""
    _, info = describe(row[0])
    if isinstance(info, str):
        return row, info
    try:
        container, stream = video.open_video(row[0])
        with container:
            count = sum(1 for _ in container.decode(stream))
    except (av.FFmpegError, OSError) as e:
        return row, f"corrupt: {type(e).__name__}: {e}"
    if count < info[0]:
        return row, f"truncated: the container lists {info[0]} frames, {count} decode"
    return row, [count] + info[1:]


# ----------------------------------------------------------------------------- the commands
def folder(src, out, captions=None, workers=4):
    """Every video and image under src -> out's rows (absolute paths), captions from a .txt beside each file or from
    the CSV `captions` (path,caption; path relative to src, or a file name); unreadable files -> the report."""
    paths = sorted(os.path.abspath(os.path.join(d, n)) for d, _, names in os.walk(src) for n in names
                   if n.lower().endswith(VIDEO_EXTS + video.IMAGE_EXTS))
    known = {}
    for row in read_rows(captions) if captions else []:
        known[os.path.normpath(row[0])] = known[os.path.basename(row[0])] = row[1] if len(row) > 1 else ""
    results, journal = run_pool(describe, paths, out, workers, f"reading {src}")
    good, bad = [], []
    for path, info in zip(paths, results):
        if isinstance(info, str):  # (a name that is not UTF-8: by its escaped bytes)
            bad.append([os.fsencode(path).decode(errors="backslashreplace"), info])
            continue
        sidecar = os.path.splitext(path)[0] + ".txt"
        caption = known.get(os.path.normpath(os.path.relpath(path, src)), known.get(os.path.basename(path)))
        if caption is None and os.path.isfile(sidecar):
            with open(sidecar) as f:
                caption = f.read()
        good.append([path, " ".join((caption or "").split())] + info)
    finish(out, good, bad, journal)
    if any(not row[1] for row in good):
        print(f"{sum(not row[1] for row in good)} rows have no caption (no .txt beside them"
              f"{', not in ' + captions if captions else ''}): filter --remove_empty_caption drops them")


def check(src, out, workers=4):
    """Decode every row of src: rows that decode go to out (num_frames, fps, height, width from the decoding: the
    frames that really decode), the others to the report with their reason."""
    rows = absolute(read_rows(src), src)
    results, journal = run_pool(check_row, rows, out, workers, f"checking {src}")
    good = [row[:2] + info for row, info in zip(rows, results) if not isinstance(info, str)]
    finish(out, good, [[row[0], info] for row, info in zip(rows, results) if isinstance(info, str)], journal)


def filter_rows(src, out, fmin=None, fmax=None, remove_empty_caption=False, remove_caption_prefix=False):
    """v1.0 csvutil's filters: frames in [fmin, fmax] (the third column), non-empty captions, LLaVA's opening words
    ("The video shows ...") removed and the rest capitalised."""
    if fmin is not None and fmax is not None and fmin > fmax:
        raise BadInput(f"--fmin {fmin} > --fmax {fmax}: no row can pass; give fmin <= fmax")
    good = []
    for n, row in enumerate(read_rows(src), 1):
        if fmin is not None or fmax is not None:
            if len(row) < 3 or not row[2].strip().isdigit():
                raise BadInput(f"{src}, row {n}: no num_frames in its third column ({row[:3]}): run check (or folder) "
                               "first")
            if fmin is not None and int(row[2]) < fmin or fmax is not None and int(row[2]) > fmax:
                continue
        caption = row[1].strip() if len(row) > 1 else ""
        if remove_caption_prefix and caption.startswith(CAPTION_PREFIXES):
            caption = next(caption[len(p):].strip() for p in CAPTION_PREFIXES if caption.startswith(p))
            caption = caption[:1].upper() + caption[1:]
        if remove_empty_caption and not caption:
            continue
        good.append([row[0], caption] + row[2:])
    finish(out, absolute(good, src), [])


def scene_row(item):
    """Cut video row[0] at its scene changes (PySceneDetect's ContentDetector) into clips in out_dir, decoding it once:
    (item, [clip rows]) or (item, the reason it failed). A scene longer than max_seconds is cut in pieces of
    max_seconds, pieces under min_seconds are dropped. Each clip keeps the source's frame rate and caption; it is
    H.264 (crf 18) with a keyframe every second, so a seek decodes at most a second before its window, and its
    shorter side is scaled down to shorter_size (0: kept; v1.0 cut to 512)."""
    row, out_dir, min_seconds, max_seconds, shorter_size = item
    from scenedetect import ContentDetector, detect

    path, caption = row[0], row[1] if len(row) > 1 else ""
    try:
        scenes = detect(path, ContentDetector(), start_in_scene=True, backend="pyav")  # [(start, end)] end excluded
        container, stream = video.open_video(path)
        with container:
            fps, clips = stream.average_rate, []
            frames, longest = enumerate(container.decode(stream)), max(1, round(max_seconds * fps))
            pieces = [(a, min(a + longest, end.frame_num)) for start, end in scenes
                      for a in range(start.frame_num, end.frame_num, longest)]
            for n, (a, b) in enumerate((a, b) for a, b in pieces if b - a >= min_seconds * fps):
                name = f"{os.path.splitext(os.path.basename(path))[0]}_scene-{n}.mp4"
                clip = video.write_video(os.path.join(out_dir, name), piece(frames, a, b, shorter_size), fps,
                                        options=dict(crf="18", g=str(round(fps))))
                with av.open(clip) as c:
                    s = c.streams.video[0]
                    clips.append([clip, caption, b - a, f"{float(fps):.6g}", s.height, s.width])
    except (av.FFmpegError, OSError, video.BadSample) as e:
        return item, f"unreadable: {type(e).__name__}: {e}"
    return item, clips


def piece(frames, a, b, shorter_size):
    """Frames a..b-1 of the (number, av.VideoFrame) iterator `frames` (the ones before a are skipped), the shorter side
    scaled down to shorter_size (even sizes); BadSample if the video ends first."""
    for i, frame in frames:
        if i >= a:
            s = shorter_size / min(frame.width, frame.height) if shorter_size else 1
            yield frame if s >= 1 else frame.reformat(width=2 * round(frame.width * s / 2),
                                                      height=2 * round(frame.height * s / 2), interpolation="AREA")
        if i >= b - 1:
            return
    raise video.BadSample(f"truncated: the video ends before frame {b - 1}")


def scenes(src, out_dir, out, min_seconds=1.0, max_seconds=10.0, shorter_size=0, workers=4):
    """Every row's video cut at its scene changes (scene_row) into out_dir; out lists the clips."""
    if importlib.util.find_spec("scenedetect") is None:
        sys.exit("prepare.py scenes needs PySceneDetect (the library v1.0's tool used): pip install scenedetect")
    items = [(row, os.path.abspath(out_dir), min_seconds, max_seconds, shorter_size)
             for row in absolute(read_rows(src), src)]
    results, journal = run_pool(scene_row, items, out, workers, f"cutting {src}")
    good = [clip for clips in results if not isinstance(clips, str) for clip in clips]
    finish(out, good, [[item[0][0], clips] for item, clips in zip(items, results) if isinstance(clips, str)], journal)


def make_cache(config, overrides):
    """config's data set encoded into its cache_dir (cache.build_cache); under torchrun each rank writes its shards."""
    cfg = load_config(config, overrides)
    validate(cfg, "cache")
    toy.ensure_shapes(cfg)
    rank, world, local = (int(os.environ.get(k, v)) for k, v in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    build_cache(cfg, f"cuda:{local}" if torch.cuda.is_available() else "cpu", rank=rank, world_size=world)
    print(f"rank {rank}: its shards are written" if world > 1 else
          f"{cfg['cache_dir']}: complete ({CachedDataset(cfg).num_skipped} rows skipped)")


# ----------------------------------------------------------------------------- command line
def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, *positional, workers=True):
        p = sub.add_parser(name, help=help)
        for arg in positional:
            p.add_argument(arg)
        if workers:
            p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: one a core)")
        return p

    p = command("folder", "a folder of videos -> CSV (captions from .txt files or --captions CSV)", "src", "out")
    p.add_argument("--captions", help="a path,caption CSV to join (paths relative to src, or file names)")
    p = command("scenes", "cut every row's video at scene changes (pip install scenedetect)", "src", "out_dir", "out")
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--max_seconds", type=float, default=10.0)
    p.add_argument("--shorter_size", type=int, default=0, help="scale the shorter side down to this (0: keep)")
    command("check", "decode every row: good rows -> out, bad ones -> out's _bad.csv", "src", "out")
    p = command("filter", "v1.0 csvutil's filters", "src", "out", workers=False)
    p.add_argument("--fmin", type=int)
    p.add_argument("--fmax", type=int)
    p.add_argument("--remove_empty_caption", action="store_true")
    p.add_argument("--remove_caption_prefix", action="store_true")
    p = sub.add_parser("cache", help="encode a config's data set into its cache_dir once (under torchrun the ranks "
                       "share the shards)")
    p.add_argument("config", help="a training config, e.g. configs/16x256.py")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key=value overrides, as train.py takes them")
    args = vars(parser.parse_args(argv))  # each command's flags are its function's parameters
    if args.get("workers", 1) < 1:
        raise BadInput(f"--workers {args['workers']}: give 1 or more processes")
    dict(folder=folder, scenes=scenes, check=check, filter=filter_rows, cache=make_cache)[args.pop("command")](**args)


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    main(sys.argv[1:])
