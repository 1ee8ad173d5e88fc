"""Video in and out: mp4 (or PNG) writing, whole-video reading, and the seeking decoder that reads a training clip's
frames without decoding the video from its start; resize and centre crop.

    write_video("a.mp4", frames)              # uint8 (T, H, W, 3) or float (3, T, H, W) in [-1, 1], atomically
    decode("a.mp4", 16, 3, generator)         # uint8 (16, H, W, 3): v1.0's temporal crop, decoded seeking
"""
import os
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

from errors import atomic

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMATS = {".mkv": "matroska", ".m4v": "mp4"}  # FFmpeg's muxer where it is not the extension (the temp file has none)


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


def write_video(path, frames, fps=8, codec="libx264", options=None):
    """Write frames (see to_uint8, or any iterable of uint8 (H, W, 3) arrays or av.VideoFrames: streamed) as a video,
    or a one-frame clip as a PNG when path ends in .png (lossless), atomically; return path. The extension picks the
    container; options: the encoder's (default {"crf": "10"}). Odd sizes are padded by edge repeats for video. crf 10
    (default 23) keeps small pure-colour clips faithful. Below 32 pixels yuv444p, not yuv420p: half-resolution colour
    blurs a 2x2-pixel shape into black (an 8x8 demo sample's blue read back at 126 instead of 194)."""
    png = path.lower().endswith(".png")
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = to_uint8(frames)
        if png and len(frames) != 1:
            raise ValueError(f"{path}: a PNG holds one frame, got {len(frames)}")
    ext, stream = os.path.splitext(path)[1].lower(), None
    with atomic(path) as tmp, av.open(tmp, "w", format="image2" if png else FORMATS.get(ext, ext[1:])) as container:
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
                    stream.options = {"crf": "10"} if options is None else options
                stream.width, stream.height = frame.width, frame.height
                stream.pix_fmt = "rgb24" if png else "yuv444p" if min(frame.width, frame.height) < 32 else "yuv420p"
            frame.pts = None  # numbered by the encoder (a decoded frame would keep its source's pts)
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        container.mux(stream.encode())  # flush
    return path


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


def not_a_file(path):
    """Why path is not read as a video or image, looked at without opening it (FFmpeg would wait forever on a FIFO);
    None if it is a regular file with a UTF-8 name (others cannot go into a CSV: named by their escaped bytes)."""
    try:
        path.encode()
    except UnicodeEncodeError:
        return "a name that is not UTF-8 (skipped: rename it)"
    return None if os.path.isfile(path) else "missing file" if not os.path.exists(path) else (  # isfile: S_ISREG
        "not a regular file (a FIFO, device or folder: never opened)")


def decode(path, num_frames, frame_interval, generator, seek=True):
    """uint8 (num_frames, H, W, 3): the frames frame_indices picks. seek=False always decodes from frame 0 (the plain
    path frames_seeking is tested against); seeking, a window near the end of a long clip costs about what one near
    its start costs (README, "Loader throughput")."""
    if not_a_file(path):
        raise BadSample(not_a_file(path))
    try:
        if path.lower().endswith(IMAGE_EXTS):  # v1.0: an image is repeated num_frames times
            picks, got = [0] * num_frames, None
        else:
            total, start, step = frame_timing(path)
            picks = frame_indices(total, num_frames, frame_interval, generator)
            got = frames_seeking(path, picks, start, step) if seek and step is not None else None
        if got is None:
            got = frames_from_start(path, picks)
    except (av.FFmpegError, OSError) as e:  # InvalidDataError for a cut mp4, permission errors, ...
        raise BadSample(f"unreadable: {type(e).__name__}: {e}") from e
    if len(got) < len(set(picks)):
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


