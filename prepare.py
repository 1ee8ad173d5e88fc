"""Data preparation: a folder of videos -> the CSV train.py reads (checked, filtered, optionally cut at scene changes),
the latent cache, and how fast the loader is.

    python prepare.py folder videos/ raw.csv                 # captions from videos/x.txt beside videos/x.mp4
    python prepare.py folder videos/ raw.csv --captions captions.csv   # or joined from a path,caption CSV
    python prepare.py scenes raw.csv clips/ clips.csv        # cut at scene changes (pip install scenedetect)
    python prepare.py check clips.csv good.csv               # decode every row: good.csv + good_bad.csv (reasons)
    python prepare.py filter good.csv train.csv --fmin 48 --remove_empty_caption --remove_caption_prefix
    python prepare.py cache configs/opensora/train/16x256x256.py --data_path=train.csv --cache_dir=cache  # or torchrun
    python prepare.py bench bench_clips/                     # loader samples/s per worker, cache bytes per sample

CSV rows are Open-Sora v1.0's, no header: path,caption,num_frames,fps,height,width (v1.0's tools read num_frames as
the third column; train.py reads the first two). folder, scenes and check run a pool of --workers processes with a
progress bar, record each finished row in OUT.partial as they go (a re-run skips those: it resumes), and write OUT
(and OUT's _bad.csv report: path,reason per bad row) only at the end, through a temporary file renamed.
"""
import argparse
import csv
import importlib.util
import json
import math
import multiprocessing
import os
import statistics
import sys
import time

import av
import numpy as np
import torch

import data
import toy
from config import BadInput, load_config, one_line_errors, validate

VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
CAPTION_PREFIXES = ("The video shows", "The video captures", "The video features", "The video depicts",
                    "The video presents", "The video is ", "In the video,")  # LLaVA's openings (v1.0's csvutil list)


# ----------------------------------------------------------------------------- rows in, rows out, resumably
def read_rows(path):
    """The rows of a CSV (lists of strings; blank lines dropped)."""
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if any(c.strip() for c in row)]


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
                try:
                    item, result = json.loads(line)
                    done[json.dumps(item)] = result
                except ValueError:
                    pass  # the line an interruption cut short: that item runs again
    todo = [item for item in items if json.dumps(item) not in done]
    if done:
        print(f"{journal}: resuming, {len(items) - len(todo)} of {len(items)} rows already done")
    # forkserver, not fork: a worker forked from a process with threads (torch's, tqdm's monitor) can deadlock; with
    # fork the test suite once hung in the pool's terminate() after a worker's error
    with open(journal, "a") as f, multiprocessing.get_context("forkserver").Pool(workers) as pool:
        for item, result in tqdm(pool.imap_unordered(fn, todo), total=len(todo), desc=desc, dynamic_ncols=True):
            done[json.dumps(item)] = result
            f.write(json.dumps([item, result]) + "\n")
            f.flush()
    return [done[json.dumps(item)] for item in items], journal


def finish(out, good, bad, journal=None):
    """Write the good rows to out and the bad (path, reason) rows to its _bad.csv report, atomically; then print one
    line per bad row and a summary."""
    data.write_atomic(out, data.csv_text(good))
    if bad or os.path.exists(bad_path(out)):
        data.write_atomic(bad_path(out), data.csv_text(bad))
    if journal and os.path.exists(journal):
        os.remove(journal)
    for path, reason in bad:
        print(f"bad: {path}: {reason}", file=sys.stderr)
    print(f"{out}: {len(good)} rows" + (f"; {len(bad)} bad, listed in {bad_path(out)}" if bad else ""))


def describe(path):
    """(path, [num_frames, fps, height, width]) from the container's header (num_frames: the count data.decode uses),
    or (path, the reason it cannot be read)."""
    try:
        if path.lower().endswith(data.IMAGE_EXTS):
            total = 1
        else:
            total, _, _ = data.frame_timing(path)
        container, stream = data.open_video(path)
        with container:
            return path, [total, f"{float(stream.average_rate or 0):.6g}", stream.height, stream.width]
    except (data.BadSample, av.FFmpegError, OSError) as e:
        return path, f"unreadable: {type(e).__name__}: {e}"


def check_row(row):
    """Decode every frame of row[0]: (row, [num_frames, fps, height, width]) or (row, the reason it is bad)."""
    path = row[0]
    _, info = describe(path)
    if isinstance(info, str):
        return row, info
    try:
        container, stream = data.open_video(path)
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
                   if n.lower().endswith(VIDEO_EXTS + data.IMAGE_EXTS))
    known = {}
    for row in read_rows(captions) if captions else []:
        known[os.path.normpath(row[0])] = known[os.path.basename(row[0])] = row[1] if len(row) > 1 else ""
    results, journal = run_pool(describe, paths, out, workers, f"reading {src}")
    good, bad = [], []
    for path, info in zip(paths, results):
        if isinstance(info, str):
            bad.append([path, info])
            continue
        sidecar = os.path.splitext(path)[0] + ".txt"
        caption = known.get(os.path.normpath(os.path.relpath(path, src)), known.get(os.path.basename(path)))
        if caption is None and os.path.exists(sidecar):
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
    rows = read_rows(src)
    results, journal = run_pool(check_row, rows, out, workers, f"checking {src}")
    good = [row[:2] + info for row, info in zip(rows, results) if not isinstance(info, str)]
    finish(out, good, [[row[0], info] for row, info in zip(rows, results) if isinstance(info, str)], journal)


def filter_rows(src, out, fmin=None, fmax=None, remove_empty_caption=False, remove_caption_prefix=False):
    """v1.0 csvutil's filters: frames in [fmin, fmax] (the third column), non-empty captions, LLaVA's opening words
    ("The video shows ...") removed and the rest capitalised."""
    good = []
    for n, row in enumerate(read_rows(src), 1):
        if fmin is not None or fmax is not None:
            if len(row) < 3 or not row[2].strip().isdigit():
                sys.exit(f"{src}, row {n}: no num_frames in its third column ({row[:3]}); run check (or folder) first")
            if not (fmin or 0) <= int(row[2]) <= (fmax if fmax is not None else math.inf):
                continue
        caption = row[1].strip() if len(row) > 1 else ""
        if remove_caption_prefix:
            for prefix in CAPTION_PREFIXES:
                if caption.startswith(prefix):
                    caption = caption[len(prefix):].strip()
                    caption = caption[:1].upper() + caption[1:]
                    break
        if remove_empty_caption and not caption:
            continue
        good.append([row[0], caption] + row[2:])
    finish(out, good, [])


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
        container, stream = data.open_video(path)
        with container:
            fps, clips = stream.average_rate, []
            frames, longest = enumerate(container.decode(stream)), max(1, round(max_seconds * fps))
            pieces = [(a, min(a + longest, end.frame_num)) for start, end in scenes
                      for a in range(start.frame_num, end.frame_num, longest)]
            for n, (a, b) in enumerate((a, b) for a, b in pieces if b - a >= min_seconds * fps):
                name = f"{os.path.splitext(os.path.basename(path))[0]}_scene-{n}.mp4"
                clip = data.write_video(os.path.join(out_dir, name), piece(frames, a, b, shorter_size), fps,
                                        options=dict(crf="18", g=str(round(fps))))
                with av.open(clip) as c:
                    s = c.streams.video[0]
                    clips.append([clip, caption, b - a, f"{float(fps):.6g}", s.height, s.width])
    except (av.FFmpegError, OSError, data.BadSample) as e:
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
    raise data.BadSample(f"truncated: the video ends before frame {b - 1}")


def scenes(src, out_dir, out, min_seconds=1.0, max_seconds=10.0, shorter_size=0, workers=4):
    """Every row's video cut at its scene changes (scene_row) into out_dir; out lists the clips."""
    if importlib.util.find_spec("scenedetect") is None:
        sys.exit("prepare.py scenes needs PySceneDetect (the library v1.0's tool used): pip install scenedetect")
    items = [(row, os.path.abspath(out_dir), min_seconds, max_seconds, shorter_size) for row in read_rows(src)]
    results, journal = run_pool(scene_row, items, out, workers, f"cutting {src}")
    good = [clip for clips in results if not isinstance(clips, str) for clip in clips]
    finish(out, good, [[item[0][0], clips] for item, clips in zip(items, results) if isinstance(clips, str)], journal)


# ----------------------------------------------------------------------------- the latent cache
def build_cache(cfg, device=None, dtype=torch.float32, rank=0, world_size=1):
    """Encode this rank's shards of cfg's data set into cfg["cache_dir"] (the format: data.py's cache section); shards
    already written are kept (a re-run resumes). cfg["num_workers"] DataLoader workers decode the clips. Returns the
    shard numbers written."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from text import build_text_encoder
    from vae import build_vae

    dataset, windows = data.video_dataset(cfg), cfg["cache_windows"]
    vae = build_vae(cfg["vae"], device, dtype)
    text_encoder = build_text_encoder(cfg["text_encoder"], device, dtype)
    cache_dir, shards = cfg["cache_dir"], math.ceil(len(dataset) / data.SHARD)
    if data.read_meta(cfg) is None:  # every rank writes the same meta.json
        meta = dict(settings=data.cache_settings(cfg), shards=shards, rows=len(dataset), windows=windows,
                    caption_channels=text_encoder.output_dim, text_tokens=text_encoder.model_max_length,
                    masked=cfg["text_encoder"]["type"] == "t5")
        data.write_atomic(os.path.join(cache_dir, "meta.json"), json.dumps(meta, indent=1))

    def clips(rows):  # in a DataLoader worker: [(i, row i's clips of epochs 0..W-1, or why it is bad)]
        out = []
        for i in rows:
            try:
                views = []
                for epoch in range(windows):
                    dataset.set_epoch(epoch)
                    views.append(dataset.get(i, i))
                out.append((i, views))
            except data.BadSample as e:
                out.append((i, str(e)))
        return out

    todo = [k for k in range(rank, shards, world_size) if not os.path.exists(data.shard_path(cache_dir, k))]
    for k in tqdm(todo, desc=f"caching {cfg['data_path']}", dynamic_ncols=True, disable=rank != 0):
        rows = [i for i in range(k * data.SHARD, min((k + 1) * data.SHARD, len(dataset))) if not dataset.bad[i]]
        index, texts, parts = [], [], []
        for group in torch.utils.data.DataLoader(rows, batch_size=max(1, cfg["batch_size"] // windows),
                                                 num_workers=cfg["num_workers"], collate_fn=clips):
            for i, views in group:
                if isinstance(views, str):
                    dataset.mark_bad(i, views)
            good = [views for _, views in group if not isinstance(views, str)]
            if not good:
                continue
            index += [i for i, views in group if not isinstance(views, str)]
            texts += [views[0]["text"] for views in good]
            x = torch.stack([s["video"] for views in good for s in views]).to(device, dtype)  # (B*W, 3, T, H, W)
            mean, std = vae.posterior(x)  # (B*W, C, T, h, w) each
            text = text_encoder.encode([views[0]["text"] for views in good])
            if "mask" in text:  # T5 tokens: the kept ones only
                lengths = text["mask"].sum(1)
                if not torch.equal(text["mask"].bool(), torch.arange(text["mask"].shape[1], device=lengths.device)
                                   < lengths[:, None]):
                    raise ValueError("the text encoder's mask is not a prefix of ones: the cache cannot drop padding")
                y = torch.cat([y[0, :n] for y, n in zip(text["y"], lengths.tolist())])  # (kept tokens, C')
            else:  # CLIP's one pooled vector (B, 1, 1, C') or class ids (B,): one row each
                y, lengths = text["y"].flatten(1) if text["y"].ndim > 1 else text["y"], torch.ones(len(good), dtype=int)
            parts.append(dict(latents=mean.bfloat16().cpu(), std=std.bfloat16().cpu(),
                              y=(y.bfloat16() if y.is_floating_point() else y).cpu(),
                              lengths=lengths.cpu()))
        out = dict(index=torch.tensor(index, dtype=torch.int64))
        if parts:  # an all-bad shard holds only its index
            out |= {n: torch.cat([p[n] for p in parts]) for n in ("latents", "std", "y", "lengths")}
            for n in ("latents", "std"):
                out[n] = out[n].unflatten(0, (len(index), windows))  # (n, W, C, T, h, w)
            if not cfg["cache_posterior"]:
                del out["std"]
        tmp = data.shard_path(cache_dir, k) + f".tmp{rank}"
        save_file({n: t.contiguous() for n, t in out.items()}, tmp, metadata=dict(captions=json.dumps(texts)))
        os.replace(tmp, data.shard_path(cache_dir, k))
    return todo



def cache_bytes(latent_shape, tokens, caption_channels, windows=1, posterior=False):
    """Bytes a cached row takes in its shard, tensors only: bf16 latents (C, T, h, w) x windows (x2 with the std),
    `tokens` kept caption tokens of caption_channels, its length and index (the README's cache table)."""
    return 2 * math.prod(latent_shape) * windows * (1 + posterior) + 2 * tokens * caption_channels + 16


# ----------------------------------------------------------------------------- loader speed and cache size
LOADER_ROWS = {"16x256": (16, 256, 8), "16x512": (16, 512, 2), "64x512": (64, 512, 1)}  # bench.py's online rows:
SOURCES = {"1080p": (1080, 1920, 250), "4K": (2160, 3840, 250),  # frames (every 3rd), size, batch; height, width,
           "512p": (512, 910, 30)}  # keyframe interval: x264's default, or prepare.py scenes --shorter_size 512's


def bench_clip(path, seconds, height, width, keyint=250, fps=30):
    """A synthetic camera pan (4 px a frame) over smooth colour blobs and fine texture, with sensor noise, encoded by
    x264 (crf 23, preset veryfast, a keyframe every `keyint` frames): ~7 Mbit/s at 1080p, 28 at 4K, like stock
    footage. Written once: an existing file is kept."""
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(0)
    pan = 4 * seconds * fps
    blobs = torch.rand(1, 3, height // 64 + 2, (width + pan) // 64 + 2, generator=torch.Generator().manual_seed(0))
    blobs = torch.nn.functional.interpolate(blobs, size=(height, width + pan), mode="bilinear")[0]  # (3, H, W + pan)
    scene = (blobs.permute(1, 2, 0).numpy() * 200).astype(np.int16)
    texture = rng.integers(0, 40, (height // 4 + 1, (width + pan) // 4 + 1, 1), dtype=np.int16)
    scene += texture.repeat(4, 0).repeat(4, 1)[:height, :width + pan]
    noise = [rng.integers(-12, 13, (height, width, 3), dtype=np.int16) for _ in range(5)]
    frames = (np.clip(scene[:, 4 * t:4 * t + width] + noise[t % 5], 0, 255).astype(np.uint8)
              for t in range(seconds * fps))
    return data.write_video(path, frames, fps, options=dict(crf="23", preset="veryfast", g=str(keyint)))


def loader_rate(csv_path, frames, size, batch, workers, samples):
    """Samples/s through a DataLoader of `workers` processes over VideoDataset(csv_path): decode, resize/crop, flip,
    collate; timed after each worker's first batch."""
    dataset = data.VideoDataset(csv_path, frames, 3, (size, size))
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers))
    for _ in range(workers):
        next(loader)
    t0, n = time.perf_counter(), 0
    while n < samples:
        n += len(next(loader)["text"])
    return n / (time.perf_counter() - t0)


def window_seconds(path, at, frames=16, repeats=3, seek=True):
    """Median seconds to decode (data.decode's calls) a window of `frames` frames every 3rd starting `at` s in."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total, start, step = data.frame_timing(path)
        with av.open(path) as c:
            first = round(at * c.streams.video[0].average_rate)
        picks = np.linspace(first, first + 3 * frames - 1, frames, dtype=int).tolist()
        got = data.frames_seeking(path, picks, start, step) if seek else data.frames_from_start(path, picks)
        assert got is not None and len(got) == frames, path
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(clip_dir, workers=(1, 2), samples=8, feed=None):
    """Print the loader's samples/s per worker on generated 30 s clips (1080p and 4K, and 512p with a keyframe every
    second as prepare.py scenes writes) for bench.py's online training rows, the workers each row needs at `feed`
    samples/s, the cost of a window by position in a 60 s 1080p clip, and the cache's bytes per sample."""
    torch.set_num_threads(1)  # as in DataLoader workers
    print("| source | loader row | " + " | ".join(f"{w} workers: samples/s per worker" for w in workers) + " |")
    print("|---|---|" + "---|" * len(workers))
    per_worker = {}
    for source, (height, width, keyint) in SOURCES.items():
        clip = bench_clip(os.path.join(clip_dir, f"{source}_30s.mp4"), 30, height, width, keyint)
        csv_path = data.write_atomic(os.path.join(clip_dir, f"{source}.csv"), data.csv_text([[clip, "bench"]] * 1000))
        for row, (frames, size, batch) in LOADER_ROWS.items():
            rates = [loader_rate(csv_path, frames, size, batch, w, samples) / w for w in workers]
            per_worker[source, row] = rates[-1]
            print(f"| {source} | {row} b{batch} | " + " | ".join(f"{r:.2f}" for r in rates) + " |", flush=True)
    for row, rate in (feed or {}).items():
        print(f"{row} at {rate} samples/s needs " + ", ".join(
            f"{math.ceil(rate / per_worker[source, row])} workers from {source}" for source in SOURCES))
    long = bench_clip(os.path.join(clip_dir, "1080p_60s.mp4"), 60, 1080, 1920)
    near, far = window_seconds(long, 5), window_seconds(long, 55)
    print(f"16-frame window of a 60 s 1080p clip: at 5 s {near:.2f} s, at 55 s {far:.2f} s ({far / near:.2f}x); "
          f"decoded from the start at 55 s: {window_seconds(long, 55, repeats=1, seek=False):.2f} s")
    print("| sample | cached | bytes | v1.0's estimate (1 MB + 4 MB) / bytes |\n|---|---|---|---|")
    for name, latent in (("16x256", (4, 16, 32, 32)), ("64x512", (4, 64, 64, 64))):
        for tokens, windows, posterior in ((120, 1, False), (30, 1, False), (30, 1, True), (30, 4, True)):
            n = cache_bytes(latent, tokens, 4096, windows, posterior)
            print(f"| {name} | {tokens} tokens, {windows} window{'s' * (windows > 1)}{', std' * posterior} | "
                  f"{n / 2**20:.2f} MiB | {5 * 2**20 / n:.1f}x |")


# ----------------------------------------------------------------------------- command line
def main(argv):
    if argv[:1] == ["cache"]:  # the config system's --key=value overrides, like train.py
        if len(argv) < 2:
            raise BadInput("usage: [torchrun ...] prepare.py cache CONFIG.py [--key=value ...]")
        cfg = load_config(argv[1], argv[2:])
        validate(cfg, "cache")
        toy.ensure_shapes(cfg)
        rank, world, local = (int(os.environ.get(k, v)) for k, v in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
        build_cache(cfg, f"cuda:{local}" if torch.cuda.is_available() else "cpu", rank=rank, world_size=world)
        print(f"rank {rank}: its shards are written" if world > 1 else
              f"{cfg['cache_dir']}: complete ({data.CachedDataset(cfg).num_skipped} rows skipped)")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("folder", help="a folder of videos -> CSV (captions from .txt files or --captions CSV)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--captions", help="a path,caption CSV to join (paths relative to src, or file names)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: one a core)")
    p = sub.add_parser("scenes", help="cut every row's video at scene changes (pip install scenedetect)")
    p.add_argument("src")
    p.add_argument("out_dir")
    p.add_argument("out")
    p.add_argument("--min_seconds", type=float, default=1.0)
    p.add_argument("--max_seconds", type=float, default=10.0)
    p.add_argument("--shorter_size", type=int, default=0, help="scale the shorter side down to this (0: keep)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: one a core)")
    p = sub.add_parser("check", help="decode every row: good rows -> out, bad ones -> out's _bad.csv")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: one a core)")
    p = sub.add_parser("filter", help="v1.0 csvutil's filters")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--fmin", type=int)
    p.add_argument("--fmax", type=int)
    p.add_argument("--remove_empty_caption", action="store_true")
    p.add_argument("--remove_caption_prefix", action="store_true")
    p = sub.add_parser("bench", help="loader samples/s per worker, window cost by position, cache bytes per sample")
    p.add_argument("clip_dir", help="where the generated clips are written (kept for the next run)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    p.add_argument("--samples", type=int, default=8, help="samples timed per measurement")
    p.add_argument("--feed", default="16x256=13.9,16x512=3.21,64x512=0.769",
                   help="samples/s per GPU to feed, per row (default: README's bench.py online rows, H100)")
    args = parser.parse_args(argv)
    if args.command == "folder":
        folder(args.src, args.out, args.captions, args.workers)
    elif args.command == "scenes":
        scenes(args.src, args.out_dir, args.out, args.min_seconds, args.max_seconds, args.shorter_size, args.workers)
    elif args.command == "check":
        check(args.src, args.out, args.workers)
    elif args.command == "filter":
        filter_rows(args.src, args.out, args.fmin, args.fmax, args.remove_empty_caption, args.remove_caption_prefix)
    else:
        feed = {k: float(v) for k, v in (kv.split("=") for kv in args.feed.split(",") if kv)}
        bench(args.clip_dir, [int(w) for w in args.workers.split(",")], args.samples, feed)


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # bad input: one line, exit code 2 (NANOSORA_DEBUG=1: the traceback)
    main(sys.argv[1:])
