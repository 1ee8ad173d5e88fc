"""Data: a CSV of (video, caption) rows -> training clips (seeking decode); reading the latent cache; mp4 in and out.
Making the CSV and the cache: prepare.py; the CPU demo's toy set: toy.py.

    dataset = VideoDataset("train.csv", num_frames=16, frame_interval=3, image_size=(256, 256))
    dataset[0]  # dict(video=(3, 16, 256, 256) float32 in [-1, 1], text="a cat playing piano")

The CSV is Open-Sora v1.0's: rows `path,caption` (extra columns ignored), an optional header `path,caption` or
`path,text`, relative paths joined to `root`; read strictly (read_csv): a bad row is an error naming the file and line,
never a row silently merged or made up. Videos are decoded with PyAV; images (by extension) are 1-frame clips
repeated num_frames times, as v1.0 does (so num_frames=1 gives (3, 1, H, W), and images batch with videos).
"""
import csv
import io
import json
import multiprocessing
import os
import sys
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

from config import BadInput

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def warn(message):
    print(f"data: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- mp4 in and out
def to_uint8(frames):
    """uint8 (T, H, W, 3) numpy as is, or a float tensor (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[0] != 3:
            raise ValueError(f"video tensor must be (3, T, H, W) in [-1, 1], got shape {tuple(frames.shape)}")
        x = ((frames.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).floor()  # v1.0 rounds the same way
        return x.to(torch.uint8).permute(1, 2, 3, 0).numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def write_video(path, frames, fps=8, crf=10, codec="libx264", options=None):
    """Write frames (see to_uint8, or any iterable of uint8 (H, W, 3) arrays or av.VideoFrames: streamed) as a video,
    or a one-frame clip as a PNG when path ends in .png (lossless), atomically; return path. The extension picks the
    container; options: the encoder's (default {"crf": crf}). Odd sizes are padded by edge repeats for video. crf 10
    (default 23) keeps small pure-colour clips faithful. Below 32 pixels yuv444p, not yuv420p: half-resolution colour
    blurs a 2x2-pixel shape into black (an 8x8 demo sample's blue read back at 126 instead of 194)."""
    png = path.lower().endswith(".png")
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = to_uint8(frames)
        if png and len(frames) != 1:
            raise ValueError(f"{path}: a PNG holds one frame, got {len(frames)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp, stream = f"{path}.tmp{os.getpid()}{os.path.splitext(path)[1]}", None
    try:
        with av.open(tmp, "w", format="image2" if png else None) as container:
            for frame in frames:
                if not isinstance(frame, av.VideoFrame):
                    if not png:  # 4:2:0 video needs even sizes
                        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
                    frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                if stream is None:
                    if png:
                        stream = container.add_stream("png")
                    else:
                        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                        stream.options = {"crf": str(crf)} if options is None else options
                    stream.width, stream.height = frame.width, frame.height
                    stream.pix_fmt = "rgb24" if png else "yuv444p" if min(frame.width, frame.height) < 32 else "yuv420p"
                frame.pts = None  # numbered by the encoder (a decoded frame would keep its source's pts)
                container.mux(stream.encode(frame))
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            container.mux(stream.encode())  # flush
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_atomic(path, text):
    """Write text to path through a temporary file renamed over it: an interrupted write leaves no half file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp{os.getpid()}", "w", newline="") as f:
        f.write(text)
    os.replace(f"{path}.tmp{os.getpid()}", path)
    return path


def csv_text(rows):
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def read_video(path):
    """Every frame of a video (or the one of an image) -> uint8 (T, H, W, 3)."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ----------------------------------------------------------------------------- decoding a clip
class BadSample(Exception):
    """A sample we skip: missing, unreadable, corrupt or too short. The message says which."""


def frame_indices(total, num_frames, frame_interval, generator):
    """v1.0's TemporalRandomCrop + linspace, quirks kept: the window of num_frames * frame_interval frames starts at
    randint(0, total - window - 1), so the last frame is never the window's end (the -1); a clip shorter than the
    window gives its whole length; and the frames are np.linspace(start, end - 1, num_frames) truncated to int, so
    the step is (window - 1) / (num_frames - 1), not exactly frame_interval: 16 every 3 are 0, 3, .., 21, 25, .., 47.
    Too short (BadSample) only when the window holds fewer than num_frames frames (v1.0 asserts the same)."""
    window = num_frames * frame_interval
    start = int(torch.randint(0, max(0, total - window - 1) + 1, (1,), generator=generator))
    end = min(start + window, total)
    if end - start < num_frames:
        raise BadSample(f"too short: {total} frames, need at least num_frames={num_frames}")
    return np.linspace(start, end - 1, num_frames, dtype=int).tolist()


def open_video(path):
    """An open container and its first video stream (FFmpeg's threads on)."""
    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise BadSample("no video stream")
    container.streams.video[0].thread_type = "AUTO"
    return container, container.streams.video[0]


def frame_timing(path):
    """(total, start, step): the video's frame count, frame 0's pts and the pts ticks from one frame to the next, step
    None where frame k's pts is not known to be start + k * step (variable frame rate): then no seeking. mp4/mov/avi
    give the count, rate and duration in their index (count * step must equal the duration: the frames before a seek
    are vouched for by that alone, those after it are checked as they come); mkv/webm list no count: their packets are
    read (not decoded) and every pts checked. FFmpeg's r_frame_rate (base_rate) must equal the average rate."""
    container, stream = open_video(path)
    with container:
        rate, start = stream.average_rate, stream.start_time
        step = 1 / (rate * stream.time_base) if rate and rate == stream.base_rate and start is not None else None
        if stream.frames:
            ok = step is not None and stream.duration is not None and abs(stream.duration - stream.frames * step) <= 1
            return stream.frames, start, step if ok else None
        pts = [p.pts for p in container.demux(stream) if p.size]
    if step is None or None in pts or any(frame_number(p, start, step) != k for k, p in enumerate(sorted(pts))):
        step = None
    return len(pts), start, step


def frame_number(pts, start, step):
    """k where pts = start + k * step to within one tick (timestamps are rounded to the time base), else None."""
    k = None if pts is None else round((pts - start) / step)
    return k if k is not None and abs(pts - start - k * step) <= 1 else None


def frames_from_start(path, picks):
    """{k: uint8 (H, W, 3)} for the frames k in picks (sorted): every frame decoded in order up to the last one picked,
    frame k being the k-th the decoder gives; only the picked ones converted to RGB."""
    container, stream = open_video(path)
    with container:
        wanted, got = set(picks), {}
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                got[k] = frame.to_ndarray(format="rgb24")
            if k >= picks[-1]:
                break
        return got


def frames_seeking(path, picks, start, step):
    """frames_from_start's result, decoded from the keyframe at or before picks[0], every packet and frame numbered by
    its pts; or None where that cannot be trusted (the caller then decodes from the start): unless the stream starts
    with a keyframe at `start`, every pts lies on the grid, the frames come out in order and no frame number from the
    first one out to the last one picked is missing among the packets (a gap: a variable frame rate). Frames not
    picked are decoded only if others refer to them (skip_frame NONREF: about half of x264's default frames). An
    open-GOP keyframe (x265's default) drops the frames before it that refer back once seeked to; if the seek lands
    on one whose first frame out comes after picks[0], the keyframe before it is tried."""
    container, stream = open_video(path)
    codec = stream.codec_context

    def after_seek(ticks):  # got, None (untrusted), or the dts of a keyframe landed on too late
        container.seek(ticks, stream=stream, backward=True, any_frame=False)
        wanted, got, sent, out, landed = set(picks), {}, set(), [], None
        for packet in container.demux(stream):
            if packet.size:
                k, landed = frame_number(packet.pts, start, step), packet.dts if landed is None else landed
                if k is None:
                    return None
                sent.add(k)
                codec.skip_frame = "DEFAULT" if k in wanted else "NONREF"
            for frame in codec.decode(packet):
                k = frame_number(frame.pts, start, step)
                if k is None or (out and k <= out[-1]):
                    return None
                if not out and k > picks[0]:
                    return landed
                out.append(k)
                if k in wanted:
                    got[k] = frame.to_ndarray(format="rgb24")
                if k >= picks[-1]:
                    return got if len(got) == len(wanted) and sent.issuperset(range(out[0], k + 1)) else None
        return None

    with container:
        first = next(container.demux(stream), None)
        if first is None or not first.is_keyframe or first.pts != start:
            return None
        got = after_seek(int(start + picks[0] * step))
        if isinstance(got, int):
            got = after_seek(got - 1)
        return got if isinstance(got, dict) else None


def decode(path, num_frames, frame_interval, generator, seek=True):
    """uint8 (num_frames, H, W, 3): the frames frame_indices picks. seek=False always decodes from frame 0 (the plain
    path frames_seeking is tested against); seeking, a window near the end of a long clip costs about what one near
    its start costs (README, "Loader throughput")."""
    if not os.path.isfile(path):
        raise BadSample("missing file")
    try:
        if path.lower().endswith(IMAGE_EXTS):  # v1.0: an image is repeated num_frames times
            container, stream = open_video(path)
            with container:
                return np.repeat(next(container.decode(stream)).to_ndarray(format="rgb24")[None], num_frames, axis=0)
        total, start, step = frame_timing(path)
        picks = frame_indices(total, num_frames, frame_interval, generator)
        got = frames_seeking(path, picks, start, step) if seek and step is not None else None
        if got is None:
            got = frames_from_start(path, picks)
    except (av.FFmpegError, OSError, StopIteration) as e:  # InvalidDataError for a cut mp4, permission errors, ...
        raise BadSample(f"unreadable: {type(e).__name__}: {e}") from e
    if len(got) < len(picks):
        raise BadSample(f"truncated: decoded {len(got)} of the {len(picks)} frames needed (frame {picks[-1]})")
    return np.stack([got[k] for k in picks])


def resize_crop(x, size, flip=False):
    """uint8 (T, 3, H, W) -> uint8 (T, 3, *size): scale so the frame covers size keeping its aspect, then centre crop
    (v1.0's UCFCenterCropVideo; for a square size, the short side goes to size); flip: mirrored first (as v1.0: flip,
    then resize). Bilinear as v1.0, but antialiased (v1.0's plain bilinear aliases when it shrinks a large frame), and
    on uint8: torch's uint8 kernel is ~18x faster than float on a 1080p frame and within 1 level of it (tested). The
    resize is mirror-symmetric, so the small result is flipped (with the crop mirrored), never the large frame."""
    th, tw = size
    H, W = x.shape[-2:]
    scale = max(th / H, tw / W)
    h, w = max(th, round(H * scale)), max(tw, round(W * scale))
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    i, j = int(round((h - th) / 2)), int(round((w - tw) / 2))
    if flip:
        return x[..., i:i + th, w - tw - j:w - j].flip(-1)
    return x[..., i:i + th, j:j + tw]


# ----------------------------------------------------------------------------- the data set
def read_csv(data_path, root=None):
    """[(path, caption)] from an Open-Sora v1.0 CSV. Strict, so that no row is lost or made up unnoticed: UTF-8 (a BOM
    is skipped), each row on its own line (a quote left open would swallow the rows after it), a first row that names
    a `path` column must be the header `path,caption` or `path,text`; every row needs a caption. BadInput otherwise."""
    try:
        with open(data_path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadInput(f"{data_path}: cannot read the CSV ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise BadInput(f"{data_path}, line {line}: not UTF-8 (byte {raw[e.start]:#04x}): save the CSV as UTF-8") from e
    samples = []
    for n, line in enumerate(text.split("\n"), 1):
        try:
            row = next(csv.reader([line.rstrip("\r")], strict=True), [])
        except csv.Error as e:
            raise BadInput(f"{data_path}, line {n}: {e} in {line[:60]!r}: close the quote; a caption with a comma or "
                           'quote goes in "double quotes", its quotes doubled') from e
        if not any(c.strip() for c in row):
            continue  # blank line
        head = [c.strip().lower() for c in row[:2]]
        if not samples and (head[0] == "path" or head[1:] in (["caption"], ["text"])):  # a header row
            if head not in (["path", "caption"], ["path", "text"]):
                raise BadInput(f"{data_path}, line {n}: header {','.join(row)!r}: name the first two columns "
                               "path,caption (or path,text)")
            continue
        if len(row) < 2 or not row[1].strip():
            raise BadInput(f"{data_path}, line {n}: row {row!r} has no caption (rows are path,caption; python prepare.py "
                           "filter --remove_empty_caption drops such rows)")
        samples.append((os.path.join(root, row[0]) if root else row[0], row[1]))
    if not samples:
        raise BadInput(f"{data_path}: no rows (expected path,caption rows)")
    return samples


def draws(seed, epoch, index):
    """The generator of sample `index`'s random draws in `epoch`: never the global RNG, so any worker draws the same."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)


class VideoDataset(torch.utils.data.Dataset):
    """Clips from a CSV: dict(video=float32 (3, T, H, W) in [-1, 1], text=str).

    Randomness (the temporal window, then the flip) comes from a torch.Generator seeded by (seed, epoch, index), never
    the global RNG: a sample is the same whichever DataLoader worker makes it, and a resumed run sees the same clips.
    Call set_epoch(epoch) before each epoch (the workers are forked after it with persistent_workers=False).
    (v1.0 draws from python's `random`, seeded identically in every worker.)

    Bad data: construction stats every file and decodes rows until the first good one, so a CSV whose files are all
    missing or bad fails there, naming the first; a bad file met later (corrupt, truncated, too short) is skipped,
    with one warning naming it, and __getitem__ returns the next good row instead (v1.0: a random one, ten tries).
    The skipped rows are flags in shared memory, so DataLoader workers skip a known bad file without retrying it and
    `num_skipped` counts distinct skipped files over all workers of this process (each DDP rank counts its own).
    """

    def __init__(self, data_path, num_frames=16, frame_interval=3, image_size=(256, 256), root=None, flip=True,
                 seed=0):
        self.samples = read_csv(data_path, root)
        self.num_frames, self.frame_interval, self.image_size = num_frames, frame_interval, tuple(image_size)
        self.flip, self.seed, self.epoch = flip, seed, 0
        self.bad = multiprocessing.RawArray("b", len(self.samples))  # 1: skipped; shared with forked workers
        self.skipped = multiprocessing.Value("i", 0)  # its lock also guards `bad`
        for i, (path, _) in enumerate(self.samples):
            if not os.path.isfile(path):
                self.mark_bad(i, "missing file")
        for i in range(len(self.samples)):
            if not self.bad[i]:
                try:
                    self.get(i, i)
                    break
                except BadSample as e:
                    self.mark_bad(i, e)
        else:
            raise BadInput(f"{data_path}: none of its {len(self.samples)} rows is usable (missing or bad files, "
                           f"warnings above; the first: {self.samples[0][0]})")

    def __len__(self):
        return len(self.samples)

    @property
    def num_skipped(self):
        return self.skipped.value

    def set_epoch(self, epoch):
        self.epoch = epoch

    def mark_bad(self, i, reason):
        with self.skipped.get_lock():
            if not self.bad[i]:
                self.bad[i] = 1
                self.skipped.value += 1
                warn(f"skipping {self.samples[i][0]}: {reason}")

    def get(self, i, key):
        """Row i with the random draws of `key` (the index asked for); raises BadSample."""
        g = draws(self.seed, self.epoch, key)
        path, text = self.samples[i]
        x = torch.from_numpy(decode(path, self.num_frames, self.frame_interval, g)).permute(0, 3, 1, 2)  # (T, 3, H, W)
        flip = bool(self.flip and torch.rand((), generator=g) < 0.5)
        x = resize_crop(x, self.image_size, flip).float() / 127.5 - 1  # (T, 3, H, W) in [-1, 1]
        return dict(video=x.permute(1, 0, 2, 3).contiguous(), text=text)  # (3, T, H, W)

    def __getitem__(self, index):
        for j in range(len(self.samples)):
            i = (index + j) % len(self.samples)
            if not self.bad[i]:
                try:
                    return self.get(i, index)
                except BadSample as e:
                    self.mark_bad(i, e)
        raise RuntimeError(f"every one of the {len(self.samples)} samples is bad (see the warnings above)")


# ----------------------------------------------------------------------------- the latent cache
# `python prepare.py cache CONFIG` (or train.py, finding no complete cache) encodes the data set once. Shard k of
# cache_dir holds rows [k*SHARD, (k+1)*SHARD) of the CSV (bad rows left out) as safetensors, in bf16:
#   latents, std (n, W, C, T, h, w)  the VAE posterior's mean (and, cache_posterior=True, std) of W = cache_windows
#       clips of each row: the windows and flips online epochs 0..W-1 draw. Epoch e reads clip e % W (for e < W the
#       clip online training sees) and, with the std, a new sample mean + std * noise as online training does;
#   y (kept tokens of all rows, C'), lengths (n,)  caption embeddings of the kept tokens only (T5's mask is a prefix);
#   index (n,) the CSV rows; the captions (JSON) in the metadata.
# Training from it equals training from fp32 values rounded to bf16 (tested). Each torchrun rank encodes shards rank,
# rank + world, ...; a shard appears only by rename, so a re-run resumes. meta.json records the settings; a cache built
# with others is an error, never silently used.
SHARD = 256


def cache_settings(cfg):
    keys = ("data_path", "root", "num_frames", "frame_interval", "image_size", "seed", "vae", "text_encoder",
            "make_shapes", "cache_windows", "cache_posterior")
    return json.loads(json.dumps({k: cfg[k] for k in keys}, default=str))  # tuples -> lists, as in meta.json


def read_meta(cfg):
    """meta.json of cfg's cache, or None if there is none; an error if it was built with other settings."""
    path = os.path.join(cfg["cache_dir"], "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    for key, value in cache_settings(cfg).items():
        if meta["settings"].get(key) != value:
            raise BadInput(f"{path}: the cache was built with {key}={meta['settings'].get(key)!r}, the config says "
                           f"{value!r}: delete {cfg['cache_dir']} or set another cache_dir")
    return meta


def shard_path(cache_dir, k):
    return os.path.join(cache_dir, f"shard{k:05d}.safetensors")


def cache_complete(cfg):
    meta = read_meta(cfg)
    return meta is not None and all(os.path.exists(shard_path(cfg["cache_dir"], k)) for k in range(meta["shards"]))


class CachedDataset(torch.utils.data.Dataset):
    """A cache written by build_cache: dict(latent=float32 (C, T, h, w), y=bf16 (1, L, C') zero-padded, mask=(L,) int64,
    text=str); no mask for a pooled CLIP caption (y (1, 1, C')) or a class id (y int64). Epoch e (set_epoch) reads clip e % cache_windows of each row; with the posterior, latent = mean + std *
    noise, the noise drawn from (seed, epoch, index) like VideoDataset's windows: any worker, a resumed run, alike."""

    def __init__(self, cfg):
        from safetensors import safe_open

        meta = read_meta(cfg)
        if meta is None or not cache_complete(cfg):
            raise BadInput(f"{cfg['cache_dir']}: no complete cache (python prepare.py cache CONFIG)")
        self.caption_channels, self.text_tokens = meta["caption_channels"], meta["text_tokens"]
        self.windows, self.rows, self.seed, self.epoch = meta["windows"], [], cfg["seed"], 0
        self.masked = meta["masked"]  # T5 tokens; else a pooled CLIP caption or a class id a row
        for k in range(meta["shards"]):
            with safe_open(shard_path(cfg["cache_dir"], k), "pt") as f:
                if not len(f.get_tensor("index")):
                    continue
                lengths, captions = f.get_tensor("lengths").tolist(), json.loads(f.metadata()["captions"])
            starts = np.cumsum([0] + lengths[:-1]).tolist()
            self.rows += [(k, r, captions[r], starts[r], lengths[r]) for r in range(len(lengths))]
        self.num_skipped = meta["rows"] - len(self.rows)
        if not self.rows:
            raise BadInput(f"{cfg['cache_dir']}: the cache holds no samples")
        self.cache_dir, self.files = cfg["cache_dir"], {}

    def __len__(self):
        return len(self.rows)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, index):
        from safetensors import safe_open

        k, r, text, start, n = self.rows[index]
        if k not in self.files:  # opened lazily, so in each worker (memory-mapped)
            self.files[k] = safe_open(shard_path(self.cache_dir, k), "pt")
        f, w = self.files[k], self.epoch % self.windows
        latent = f.get_slice("latents")[r, w].float()  # (C, T, h, w)
        if "std" in f.keys():
            noise = torch.randn(latent.shape, generator=draws(self.seed, self.epoch, index))
            latent = latent + f.get_slice("std")[r, w].float() * noise
        if not self.masked:  # (1, 1, C') like the CLIP encoder's, or the class id
            y = f.get_slice("y")[start]
            return dict(latent=latent, y=y.view(1, 1, -1) if y.is_floating_point() else y, text=text)
        y = torch.zeros(1, self.text_tokens, self.caption_channels, dtype=torch.bfloat16)
        y[0, :n] = f.get_slice("y")[start:start + n]
        return dict(latent=latent, y=y, mask=(torch.arange(self.text_tokens) < n).long(), text=text)


def video_dataset(cfg):
    """cfg's clips decoded on the fly (the toy set, make_shapes, is not flipped: its captions say left or right)."""
    return VideoDataset(cfg["data_path"], cfg["num_frames"], cfg["frame_interval"], cfg["image_size"], cfg["root"],
                        flip=not cfg["make_shapes"], seed=cfg["seed"])


def build_dataset(cfg):
    """The training set of cfg: the cache if cfg["cache_dir"], otherwise clips decoded on the fly."""
    return CachedDataset(cfg) if cfg["cache_dir"] else video_dataset(cfg)


def caption_channels(cfg, text_encoder=None):
    """C' of the captions: the text encoder's, or the cache's when there is no encoder."""
    return text_encoder.output_dim if text_encoder is not None else read_meta(cfg)["caption_channels"]
