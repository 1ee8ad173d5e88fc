"""The training data: a CSV of (video, caption) rows -> clips decoded on the fly (video.py's seeking decoder).
Making the CSV: prepare.py; the latent cache: cache.py; the CPU demo's toy set: toy.py.

    dataset = VideoDataset("train.csv", num_frames=16, frame_interval=3, image_size=(256, 256))
    dataset[0]  # dict(video=(3, 16, 256, 256) float32 in [-1, 1], text="a cat playing piano")

The CSV is Open-Sora v1.0's: rows `path,caption` (extra columns ignored), an optional header `path,caption` or
`path,text`, relative paths joined to `root`, or without one to the CSV's folder (v1.0: the current folder; ours, so
that a data folder with its CSV can move or be read from anywhere: video_path, which prepare.py follows too); read
strictly (read_csv): a bad row is an error naming the file and line, never a row silently merged or made up. Videos
are decoded with PyAV; images (by extension) are 1-frame clips repeated num_frames times, as v1.0 does (so
num_frames=1 gives (3, 1, H, W), and images batch with videos).
"""
import csv
import io
import multiprocessing
import os
import sys

import torch

from errors import BadInput
from video import BadSample, decode, resize_crop


def csv_text(rows):
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


# ----------------------------------------------------------------------------- the data set
def video_path(data_path, path, root=None):
    """Where a row's video is: a relative path joined to root, or without one to the CSV's folder."""
    return os.path.join(root or os.path.dirname(data_path), path)


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
        samples.append((video_path(data_path, row[0], root), row[1]))
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
        self.data_path, self.samples = data_path, read_csv(data_path, root)
        self.num_frames, self.frame_interval, self.image_size = num_frames, frame_interval, tuple(image_size)
        self.flip, self.seed, self.epoch = flip, seed, 0
        self.bad = multiprocessing.RawArray("b", len(self.samples))  # 1: skipped; shared with forked workers
        self.skipped = multiprocessing.Value("i", 0)  # its lock also guards `bad`
        for i, (path, _) in enumerate(self.samples):
            if not os.path.isfile(path):
                self.mark_bad(i, "missing file")
        self[0]  # decodes rows until the first good one: BadInput if there is none

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
                print(f"data: skipping {self.samples[i][0]}: {reason}", file=sys.stderr, flush=True)

    def get(self, i, key, epoch):
        """Row i with the random draws of `key` (the index asked for) in `epoch`; raises BadSample."""
        g = draws(self.seed, epoch, key)
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
                    return self.get(i, index, self.epoch)
                except BadSample as e:
                    self.mark_bad(i, e)
        raise BadInput(f"{self.data_path}: none of its {len(self.samples)} rows is usable (missing or bad files, "
                       f"warnings above; the first: {self.samples[0][0]})")


def video_dataset(cfg):
    """cfg's clips decoded on the fly (the toy set, make_shapes, is not flipped: its captions say left or right)."""
    return VideoDataset(cfg["data_path"], cfg["num_frames"], cfg["frame_interval"], cfg["image_size"], cfg["root"],
                        flip=not cfg["make_shapes"], seed=cfg["seed"])
