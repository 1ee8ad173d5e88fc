"""The whole test suite: CPU only, fast, grouped by the file under test. `python -m pytest -q test_all.py`

Fixture tests read the folder named by $FIXTURES (default ../shared/fixtures): they skip when it is absent and fail
when FIXTURES is set but a file is missing. Multi-process tests use gloo through torch.multiprocessing.
"""
import ast
import csv
import hashlib
import io
import json
import os
import pathlib
import re
import random
import runpy
import socket
import subprocess
import sys
import time
import types
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import cache  # noqa: E402
import data  # noqa: E402
import errors  # noqa: E402
import video as vio  # noqa: E402
import diffusion  # noqa: E402
import layers as L  # noqa: E402
import lora  # noqa: E402
import model as M  # noqa: E402
import parallel  # noqa: E402
import prepare  # noqa: E402
import text as TX  # noqa: E402
import toy  # noqa: E402
import vae as V  # noqa: E402
from config import DEFAULTS, load_config, validate  # noqa: E402
from errors import BadInput, one_line_errors  # noqa: E402
from video import read_video  # noqa: E402
from diffusion import IDDPM, DPMSolver, build_scheduler, dpm_solver_sample, forward_with_cfg, space_timesteps  # noqa: E402
import checkpoints as CK  # noqa: E402
from checkpoints import checkpoint_files, load_checkpoint, resolve_weights, save_checkpoint  # noqa: E402
from layers import attention  # noqa: E402
from model import STDiT, build_model  # noqa: E402

FIXTURES_ENV = os.environ.get("FIXTURES")
FIXTURES = pathlib.Path(FIXTURES_ENV or ROOT.parent / "shared" / "fixtures")


def load_fixture(name):
    path = FIXTURES / name
    if not path.exists():
        if FIXTURES_ENV:
            pytest.fail(f"FIXTURES={FIXTURES_ENV} is set but {path} is missing")
        pytest.skip(f"fixture folder {FIXTURES} not found (set FIXTURES=...)")
    return torch.load(path, weights_only=True)


def rel_err(got, ref):
    """Relative Frobenius error in float64."""
    got, ref = torch.as_tensor(got).double(), torch.as_tensor(ref).double()
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    return ((got - ref).norm() / ref.norm()).item()


# ============================================================================= helpers shared by several sections
def randomized(model, seed=0):
    """Every parameter ~ N(0, 0.05^2): the zero-initialised layers count in the comparisons too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def bad_input(fn, *args, **kwargs):
    """The message of the BadInput that fn raises: one line (the entry points print it alone, exit code 2)."""
    with pytest.raises(BadInput) as error:
        fn(*args, **kwargs)
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


def check(name, got, ref, tol=1e-5):
    err = rel_err(got, ref)
    print(f"{name}: rel err {err:.2e}")
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol}"


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def short_keys():
    """Restore model.SHORT_KEYS after a test that switches the attention path."""
    old = L.SHORT_KEYS
    yield
    L.SHORT_KEYS = old


@pytest.fixture(scope="module")
def tiny_vae():
    return V.build_vae(TINY_VAE)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def write_png(path, rgb):
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode())
    return str(path)


def pan_frames(T=150, H=48, W=64):
    """Frames that all differ (red shifts by 8 levels a frame): a wrong frame cannot pass for the right one."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([np.stack([(x * 4 + t * 8) % 256, (y * 5 + t * 3) % 256, np.full_like(x, t * 255 // T)], -1)
                     for t in range(T)]).astype(np.uint8)


TINY_ST = dict(input_size=(4, 8, 8), in_channels=4, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=4,
               caption_channels=16, model_max_length=8, class_dropout_prob=0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, sp_size, fn, args, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = parallel.setup(sp_size)
    try:
        torch.save(fn(ctx, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        parallel.cleanup()


def spawn(fn, world, tmp_path, *args, sp_size=1):
    """Run fn(ctx, *args) on `world` gloo processes; returns each rank's result."""
    mp.spawn(_worker, args=(world, free_port(), sp_size, fn, args, str(tmp_path)), nprocs=world)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def run_train(tmp, *args, env=None, code=0):
    cmd = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/shapes.py"), *TINY_TRAIN,
           f"--data_path={tmp}/data/train.csv", f"--cache_dir={tmp}/data/cache", *args]
    out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == code, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def losses(run_dir):
    return {int(s): float(v) for s, v in (line.split() for line in open(run_dir / "loss.txt"))}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """6 uninterrupted steps (checkpoints at 3 and 6) of the demo config at toy size."""
    tmp = tmp_path_factory.mktemp("train")
    run_train(tmp, "--max_steps=6", "--ckpt_every=3", f"--outputs={tmp}/a")
    return tmp


@pytest.fixture(scope="module")
def tiny_lora_run(tiny_run):
    """4 steps (checkpoints at 2 and 4) of rank-4 LoRA adapters on tiny_run's model; the adapter exported to lora/."""
    tmp = tiny_run
    run_train(tmp, "--max_steps=4", "--ckpt_every=2", "--lora.r=4", f"--model.from_pretrained={tmp}/a/shapes",
              "--lr=1e-2", f"--outputs={tmp}/la")
    return tmp


# ============================================================================= errors.py: the ground floor (one-line errors on every entry point, dtypes, no import cycle)
def test_no_import_cycle_and_errors_is_the_ground():
    """Every import between product files points down, also those inside functions; errors.py imports none of ours."""
    files = sorted(p for p in ROOT.glob("*.py") if p.name != "test_all.py")
    ours = {p.stem for p in files}
    graph = {p.stem: {a.name.split(".")[0] for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Import)
                      for a in n.names} | {n.module.split(".")[0] for n in ast.walk(ast.parse(p.read_text()))
                                           if isinstance(n, ast.ImportFrom) and n.module} for p in files}
    graph = {m: sorted(deps & ours - {m}) for m, deps in graph.items()}
    assert graph["errors"] == [] and "model" in graph["train"] and "errors" in graph["model"]  # the walk sees imports
    done, path = set(), []

    def visit(m):
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        if m not in done:
            path.append(m)
            for d in graph[m]:
                visit(d)
            path.pop()
            done.add(m)
    for m in graph:
        visit(m)


def test_run_dtype_fp16_without_bf16(monkeypatch):
    said = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # a V100
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    assert errors.run_dtype("bf16", torch.device("cuda"), said.append) == torch.float16 and "no bf16" in said[0]
    assert errors.run_dtype("fp32", torch.device("cuda"), said.append) == torch.float32 and len(said) == 1
    assert errors.run_dtype("bf16", torch.device("cpu")) == torch.float32


def test_reliability_entry_points_print_one_line(tmp_path, monkeypatch, capsys):
    """Bad input prints one line, exits with code 2 and writes nothing (train.py, run as a program); sample.py and
    prepare.py install the same excepthook; NANOSORA_DEBUG=1 shows the traceback instead."""
    shapes = str(ROOT / "configs/shapes.py")
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), shapes, "--batch_size=0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert (out.returncode, out.stdout, out.stderr) == (2, "", "error: batch_size=0: give a whole number >= 1\n")
    assert not os.listdir(tmp_path)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    monkeypatch.chdir(tmp_path)
    for argv, message in [(["sample.py", "--config", shapes, "-x"], "'-x' is not a flag of sample.py"),
                          (["sample.py", "--seed", "abc"], r"argument --seed: invalid int value: 'abc' \(sample.py"),
                          (["train.py", str(ROOT / "configs/16x256.py")], r"data_path='CSV_PATH': set --data_path"),
                          (["prepare.py", "cache", "nope.py"], "nope.py: no such config file")]:
        monkeypatch.setattr(sys, "argv", argv)
        sys.excepthook = sys.__excepthook__
        with pytest.raises(BadInput, match=message):
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
        assert sys.excepthook is one_line_errors, argv[0]
    try:
        raise BadInput("batch_size=0: give a whole number >= 1")
    except BadInput as e:
        error = e
    monkeypatch.setenv("NANOSORA_DEBUG", "1")
    one_line_errors(BadInput, error, error.__traceback__)
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("NANOSORA_DEBUG")
    with pytest.raises(SystemExit, match="2"):
        one_line_errors(PermissionError, PermissionError(13, "Permission denied"), None)
    assert capsys.readouterr().err == "error: PermissionError: [Errno 13] Permission denied\n"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))  # torchrun prints its message last
    with pytest.raises(SystemExit, match="2"):
        one_line_errors(BadInput, error, None)
    assert json.loads((tmp_path / "error.json").read_text())["message"] == "error: batch_size=0: give a whole number >= 1"


KILLED_WRITER = """import sys, time
sys.path.insert(0, sys.argv[1])
import errors
with errors.atomic(sys.argv[2]) as tmp:
    open(tmp, "w").write("half a file")
    print(tmp, flush=True)
    time.sleep(600)
"""


def killed_while_writing(path):
    """kill -9 a process in the middle of an atomic write of path: -> the temp file it leaves."""
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(ROOT), str(path)], stdout=subprocess.PIPE,
                              text=True)
    tmp = writer.stdout.readline().strip()
    writer.kill()
    writer.wait()
    return tmp


def test_reliab_8_a_killed_write_leaves_one_temp_file_that_the_next_run_removes(tmp_path):
    """kill -9 while a checkpoint and a video are written: one temp file each, named so that nothing takes it for an
    output (no .pt, no .mp4 ending), removed when the next train.py takes the run folder (errors.hold) and the next
    sample.py starts in save_dir (errors.sweep); a live process's temp file is left alone."""
    left = [killed_while_writing(tmp_path / name) for name in ("run/step0000002.pt", "s/a-1a2b3c4d-seed42.mp4")]
    assert all(os.path.exists(p) and not p.endswith((".pt", ".mp4")) and ".tmp" in p for p in left), left
    live = tmp_path / f"s/b.mp4.tmp{os.getpid()}"
    live.write_text("")
    errors.hold(str(tmp_path / "run"))
    errors.sweep(os.path.join(tmp_path / "s", "*"))
    assert os.listdir(tmp_path / "run") == [".lock"] and os.listdir(tmp_path / "s") == [live.name]


# ============================================================================= layers.py and attention_kernel.py: attention (SDPA, flash packing, the short-sequence kernel)
def math_attention(q, k, v, mask=None):
    """v1.0's semantics written out: per sample, its kept keys only, softmax(q k^T / sqrt(D)) v in float32."""
    outs = []
    for b in range(q.shape[0]):
        keep = slice(None) if mask is None else mask[b]
        kb, vb = k[b, keep].float(), v[b, keep].float()  # (M', H, D)
        if kb.shape[0] == 0:
            outs.append(torch.zeros_like(q[b], dtype=torch.float32))
            continue
        s = torch.einsum("nhd,mhd->hnm", q[b].float(), kb) / q.shape[-1] ** 0.5
        outs.append(torch.einsum("hnm,mhd->nhd", s.softmax(-1), vb))
    return torch.stack(outs)


def test_attention_matches_math():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, n, 2, 8, generator=g) for n in (5, 7, 7))
    masks = {"none": None,
             "prefix": torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6]).bool(),
             "non-prefix": torch.tensor([[1, 0, 1, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0, 1] * 3 + [1],
                                         [1, 1, 0, 1, 1, 0, 1]]).bool(),
             "empty row": torch.tensor([[1] * 7, [0] * 7, [1, 0, 0, 1, 0, 0, 0], [0] * 7]).bool()}
    for name, mask in masks.items():
        got, ref = attention(q, k, v, mask), math_attention(q, k, v, mask)
        assert not got.isnan().any(), name
        assert torch.allclose(got, ref, atol=1e-6, rtol=1e-5), (name, (got - ref).abs().max())
    got = attention(q, k, v, masks["empty row"])
    assert torch.equal(got[1], torch.zeros_like(got[1])) and got[0].abs().sum() > 0


def test_attention_flash_packing(monkeypatch):
    """The flash-attn branch's varlen packing (cu_seqlens, kept keys), run on the CPU through stand-ins that follow
    flash-attn's documented API; the real kernels are checked by test_attention_flash_matches_math on CUDA."""
    def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
        assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k >= int((cu_k[1:] - cu_k[:-1]).max())
        outs = [math_attention(q[None, a:b], k[None, c:d], v[None, c:d])[0]
                for a, b, c, d in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())]
        return torch.cat(outs)
    monkeypatch.setattr(L, "use_flash", lambda q: True)
    monkeypatch.setattr(L, "flash_attn_func", lambda q, k, v: math_attention(q, k, v))
    monkeypatch.setattr(L, "flash_attn_varlen_func", fake_varlen)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 2, 8, generator=g) for n in (5, 6, 6))
    for mask in (None, torch.tensor([[1, 0, 1, 1, 0, 1], [0] * 6, [1] * 6]).bool()):
        assert torch.allclose(attention(q, k, v, mask), math_attention(q, k, v, mask), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available() or L.flash_attn_func is None,
                    reason="flash-attn path needs CUDA and the flash_attn package")
def test_attention_flash_matches_math():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, n, 2, 64, generator=g).cuda().bfloat16() for n in (33, 9, 9))
    mask = torch.tensor([[1] * 9, [1, 0, 1, 0, 0, 1, 1, 0, 0], [0] * 9]).bool().cuda()
    for m in (None, mask):
        assert rel_err(attention(q, k, v, m), math_attention(q, k, v, m)) < 2e-2


def reference_attention(q, k, v, mask=None):  # float64, (B, N, H, D) layout, written independently of model.py
    s = torch.einsum("bnhd,bmhd->bhnm", q.double(), k.double()) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhnm,bmhd->bnhd", s.softmax(-1), v.double())


@pytest.mark.parametrize("N,K", [(16, 16), (5, 32), (33, 33)])
def test_short_attention_matches_sdpa(short_keys, N, K):
    """The written-out path (M <= SHORT_KEYS, no mask) and the SDPA path compute the same function."""
    g = torch.Generator().manual_seed(N * 100 + K)
    q, k, v = (torch.randn(3, n, 4, 24, generator=g) for n in (N, K, K))
    L.SHORT_KEYS = 32
    fast = L.attention(q, k, v)
    L.SHORT_KEYS = 0
    plain = L.attention(q, k, v)
    ref = reference_attention(q, k, v)
    assert rel(fast.double(), ref) < 1e-6 and rel(plain.double(), ref) < 1e-6
    assert fast.shape == (3, N, 4, 24)


def test_short_attention_gradients(short_keys):
    q, k, v = (torch.randn(2, 16, 3, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grads = []
    for short in (32, 0):
        L.SHORT_KEYS = short
        out = L.attention(q, k, v)
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(out.shape).double()).sum(),
                                         (q, k, v)))
    for a, b in zip(*grads):  # the short path's scores are fp32 (v1.0's softmax precision): ~1e-7 apart
        assert rel(a, b) < 1e-6


def test_masked_attention_not_short(short_keys):
    """A mask (cross-attention) never takes the short path; kept keys only, an empty row gives zeros."""
    L.SHORT_KEYS = 32
    q, k, v = torch.randn(2, 10, 2, 8), torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0] * 6], dtype=torch.bool)
    out = L.attention(q, k, v, mask)
    assert rel(out[0].double(), reference_attention(q[:1], k[:1], v[:1], mask[:1])[0]) < 1e-6
    assert out[1].abs().max() == 0


def test_short_attention_kernel(monkeypatch):
    """attention_kernel.py's fused kernel (CUDA) run by Triton's interpreter on the CPU: the same SelfAttention outputs
    and gradients as the plain path (odd lengths and head sizes, both seq_dims), and v1.0's numbers (stdit_tiny_ref.pt,
    whose 4 frames and 16 spatial tokens both take the kernel). Without TRITON_INTERPRET it reruns itself under it."""
    import attention_kernel as kernels
    if kernels.triton is None:
        pytest.skip("triton not installed (CUDA machines have it; `pip install triton` to run its interpreter here)")
    if not os.environ.get("TRITON_INTERPRET"):  # the kernels were compiled for CUDA at import: a fresh process
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::test_short_attention_kernel"]
        run = subprocess.run(cmd, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return
    monkeypatch.setattr(kernels, "fits", lambda x, n, heads: n <= kernels.MAX_KEYS)  # CPU tensors, any dtype
    calls, kernel = [], kernels.short_attention
    monkeypatch.setattr(kernels, "short_attention", lambda *a: calls.append(a[1:]) or kernel(*a))
    g = torch.Generator().manual_seed(0)
    for shape, seq_dim in (((2, 5, 3, 48), 1), ((2, 5, 3, 48), 2), ((2, 33, 48), 1)):
        attn = L.SelfAttention(48, 2)
        x = torch.randn(*shape, generator=g, requires_grad=True)
        w = torch.randn(shape, generator=g)
        runs = []
        for max_keys in (64, 0):  # kernel, plain
            monkeypatch.setattr(kernels, "MAX_KEYS", max_keys)
            out = attn(x, seq_dim)
            runs.append((out, *torch.autograd.grad((out * w).sum(), [x, *attn.parameters()])))
        for a, b in zip(*runs):
            assert a.shape == b.shape and rel(a.double(), b.double()) < 1e-5
    ref = load_fixture("stdit_tiny_ref.pt")
    m = M.STDiT(**ref["config"]).train()
    m.load_state_dict(ref["state_dict"])
    m.y_embedder.dropout_prob = 0.0
    runs = []
    for max_keys in (64, 0):
        monkeypatch.setattr(kernels, "MAX_KEYS", max_keys)
        m.zero_grad()
        out = m(ref["x"], ref["timestep"], ref["y"], ref["mask"])
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        runs.append((out.detach(), torch.cat([p.grad.flatten() for p in m.parameters()])))
    assert rel(runs[0][0], ref["out"]) < 1e-5
    assert rel(runs[0][0], runs[1][0]) < 1e-6 and rel(runs[0][1], runs[1][1]) < 1e-5
    # the kernel did run: for the 3 SelfAttention cases, then for the spatial and the temporal attention of each block
    assert calls == [(2, 1), (2, 2), (2, 1)] + [(ref["config"]["num_heads"], d) for d in (2, 1)] * ref["config"]["depth"]


# ============================================================================= model.py: STDiT and the zoo against v1.0, fast paths equal to the plain path, bad input
TINY = dict(input_size=(4, 8, 8), in_channels=4, depth=2, hidden_size=64, num_heads=4, caption_channels=32,
            model_max_length=8)


def tiny_inputs(B=2, L=8, seed=0, cfg=TINY):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg["in_channels"], *cfg["input_size"], generator=g)
    y = torch.randn(B, 1, L, cfg["caption_channels"], generator=g)
    return x, torch.tensor([10.0, 500.0] * (B // 2)), y


def reference_model(fixture):
    model = STDiT(**fixture["config"])
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.eval()


def test_stdit_matches_v1_fixture():
    ref = load_fixture("stdit_tiny_ref.pt")
    model = STDiT(**ref["config"])
    for key in ("pos_embed", "pos_embed_temporal"):  # computed buffers, compared BEFORE loading overwrites them
        assert torch.equal(getattr(model, key), ref["state_dict"][key]), key
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        err = rel_err(model(ref["x"], ref["timestep"], ref["y"], ref["mask"]), ref["out"])
        err_nomask = rel_err(model(ref["x"], ref["timestep"], ref["y"], None), ref["out_nomask"])
    print(f"STDiT vs v1.0: out {err:.2e}, out_nomask {err_nomask:.2e}")
    assert err < 1e-5 and err_nomask < 1e-5


def zoo_cases(fixture):
    """The model cases of a zoo fixture: the file itself, or its entries that are cases."""
    if "model_type" in fixture:
        return {"": fixture}
    return {k: v for k, v in fixture.items() if isinstance(v, dict) and "model_type" in v}


def zoo_model(case):
    """Build the case's class from its config; the computed position buffers must equal v1.0's before loading."""
    model = M.MODELS[case["model_type"]](**case["config"])
    for key, value in model.state_dict().items():
        if key.startswith("pos_embed"):
            assert torch.equal(value, case["state_dict"][key]), key
    model.load_state_dict(case["state_dict"], strict=True)
    return model.eval()


@pytest.mark.parametrize("name", ["zoo_dit_text_ref.pt", "zoo_dit_label_ref.pt", "zoo_latte_ref.pt",
                                  "zoo_pixart_ref.pt", "zoo_pixartms_ref.pt"])
@pytest.mark.parametrize("short", [0, 32])
def test_zoo_models_match_v1_fixture(name, short, short_keys):
    """DiT, Latte, PixArt, PixArtMS against v1.0's classes on random weights: every output of every case, through
    either attention path (short: the written-out one for up to 32 keys, 0: SDPA everywhere)."""
    fixture, errs = load_fixture(name), {}
    L.SHORT_KEYS = short
    for tag, case in zoo_cases(fixture).items():
        model, inputs = zoo_model(case), (case["x"], case["timestep"], case["y"])
        runs = {"out": (fixture if not tag else case, {})}
        if "mask" in case:  # PixArt family: with and without the caption mask
            runs = {"out": (case, dict(mask=case["mask"])), "out_nomask": (case, {})}
        if "data_info" in fixture:  # PixArtMS: the size conditioning, also tiled from one row
            runs = {"out": dict(mask=case["mask"], data_info=fixture["data_info"]),
                    "out_nomask": dict(data_info=fixture["data_info"]),
                    "out_one_row": dict(mask=case["mask"], data_info=fixture["data_info_one_row"])}
            runs = {k: (fixture, v) for k, v in runs.items()}
        with torch.no_grad():
            for key, (where, kwargs) in runs.items():
                errs[f"{tag}.{key}".strip(".")] = rel_err(model(*inputs, **kwargs), where[key])
    print(f"{name} vs v1.0:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert errs and all(e < 1e-5 for e in errs.values()), errs


def test_zoo_encoders_match_v1_fixture():
    """CLIP's pooled caption (a tiny random CLIP, the README's stand-in tokenizer) and the classes encoder."""
    ref = load_fixture("zoo_encoders_ref.pt")
    clip, classes = ref["clip"], ref["classes"]
    enc = TX.ClipEncoder(None, model_max_length=clip["model_max_length"], config=clip["clip_config"])
    enc.model.load_state_dict(clip["state_dict"], strict=True)

    def tokenizer(texts, max_length, **kwargs):  # [bos] + ids[:max_length - 2] + [eos], padded with eos
        rows = [[clip["bos_id"]] + [int(w) for w in t.split()][:max_length - 2] + [clip["eos_id"]] for t in texts]
        return dict(input_ids=torch.tensor([r + [clip["eos_id"]] * (max_length - len(r)) for r in rows]))
    enc.tokenizer = tokenizer
    assert torch.equal(tokenizer(clip["prompts"], clip["model_max_length"])["input_ids"], clip["input_ids"])
    out = enc.encode(clip["prompts"])
    assert sorted(out) == sorted(clip["encode_keys"]) and enc.output_dim == clip["output_dim"]
    enc.y_embedder = types.SimpleNamespace(y_embedding=clip["y_embedding"])
    errs = dict(y=rel_err(out["y"], clip["y"]), null=rel_err(enc.null(clip["n_null"]), clip["null"]))
    print("CLIP encoder vs v1.0:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert all(e < 1e-5 for e in errs.values()), errs
    enc = TX.ClassEncoder(classes["num_classes"])
    out = enc.encode(classes["prompts"])
    assert sorted(out) == sorted(classes["encode_keys"]) and torch.equal(out["y"], classes["y"])
    assert torch.equal(enc.null(classes["n_null"]), classes["null"])
    assert (enc.output_dim, enc.model_max_length) == (classes["output_dim"], classes["model_max_length"])
    with pytest.raises(ValueError, match="class ids 0..9, got 'cat'"):
        TX.ClassEncoder(10).encode(["3", "cat"])


@pytest.mark.parametrize("sampler", ["iddpm", "dpms"])
def test_zoo_class_pipeline_matches_v1_fixture(sampler):
    """Class-conditional sampling as v1.0's scripts/inference.py drives it: the model's inputs at every call too."""
    ref = load_fixture("zoo_pipeline_ref.pt")
    model, run = zoo_model(ref), ref[sampler]
    encoder = TX.ClassEncoder(ref["num_classes"])
    encoder.y_embedder = model.y_embedder
    seen, ys = [], []

    def call(x, t, y, **kwargs):
        seen.append(t.clone())
        ys.append(y.clone())
        return model(x, t, y, **kwargs)
    kind = dict(iddpm="iddpm", dpms="dpm-solver")[sampler]
    scheduler = build_scheduler(dict(type=kind, num_sampling_steps=run["num_sampling_steps"], cfg_scale=run["cfg_scale"]))
    torch.manual_seed(run["seed"])
    with torch.no_grad():
        out = scheduler.sample(call, encoder, tuple(ref["z_size"]), ref["prompts"], "cpu", progress=False)
    check(f"{kind}.sample (class-conditional {ref['model_type']})", out, run["out"])
    assert all(torch.equal(y, run["y_model"]) for y in ys)
    assert torch.allclose(torch.stack(seen).double(), run["model_timesteps"].double(), rtol=0, atol=1e-4)


def test_zoo_xl2_state_dict_layouts():
    """Every XL/2 listing of ../reference: the same keys, shapes and order as v1.0 builds them (meta device)."""
    paths = sorted((FIXTURES.parent / "reference").glob("*_state_dict.txt"))
    if not paths:
        if FIXTURES_ENV:
            pytest.fail(f"FIXTURES={FIXTURES_ENV} is set but no reference listings are beside it")
        pytest.skip("no ../reference/*_state_dict.txt")
    for path in paths:
        lines = path.read_text().splitlines()
        header = lines[0]  # "# DiT-XL/2 (DiT) state_dict ... (condition='label_1000', input_size=(1,32,32), ...): key shape"
        kind = header.split()[1]
        kwargs = {k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=(\([\d, ]+\)|'[^']*'|[\w.]+)", header)}
        rows = [ln.split() for ln in lines if ln.strip() and not ln.startswith("#")]
        expected = [(k, tuple(int(n) for n in s.split("x"))) for k, s in rows]
        with torch.device("meta"):
            model = build_model(dict(type=kind), **kwargs)
        assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected, path.name


def test_stdit_mask_cases_match_v1_fixture():
    pipe = load_fixture("stdit_pipeline_ref.pt")
    model, c = reference_model(load_fixture(pipe["model_fixture"])), pipe["mask_cases"]
    with torch.no_grad():
        errs = dict(
            out_nonprefix=rel_err(model(c["x"], c["timestep"], c["y"], c["mask_nonprefix"]), c["out_nonprefix"]),
            out_repeat=rel_err(model(c["x2"], c["timestep2"], c["y2"], c["mask_half"]), c["out_repeat"]),
            out_long_timestep=rel_err(model(c["x"], c["timestep_long"], c["y"], c["mask"]), c["out_long_timestep"]))
    print("STDiT mask cases vs v1.0:", {k: f"{v:.2e}" for k, v in errs.items()})
    assert all(e < 1e-5 for e in errs.values()), errs


def test_stdit_x_mask_matches_v11_fixture():
    ref = load_fixture("stdit_mask_ref.pt")
    model = reference_model(ref)
    args = (ref["x"], ref["timestep"], ref["y"], ref["mask"])
    with torch.no_grad():
        # all True = no condition frame: bit for bit the x_mask=None forward (v1.1 too); None is v1.0's code path
        assert torch.equal(model(*args, x_mask=torch.ones(len(ref["x"]), ref["d_t"], dtype=torch.bool)), model(*args))
        check("x_mask=None", model(*args), ref["out_none"])
        check("timestep 0", model(ref["x"], torch.zeros_like(ref["timestep"]), *args[2:]), ref["out_timestep0"])
        for case in ref["cases"]:
            check(f"x_mask {case['name']}", model(*args, x_mask=case["x_mask"]), case["out"])
    with pytest.raises(RuntimeError):  # v1.1 too: a float mask is an error (torch.where)
        model(*args, x_mask=ref["cases"][0]["x_mask"].float())


def test_temporal_branch_starts_as_nothing():
    model = STDiT(**TINY)
    block = model.blocks[0]
    assert all(torch.count_nonzero(b.attn_temp.proj.weight) == 0 and torch.count_nonzero(b.attn_temp.proj.bias) == 0
               for b in model.blocks)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 16, 64, generator=g), torch.randn(2, 8, 64, generator=g)  # (B, T, S, C), (B, L, C)
    t0 = torch.randn(2, 6 * 64, generator=g)
    args = (x, y, t0, None, model.pos_embed_temporal)
    out = block(*args)
    hook = block.attn_temp.register_forward_hook(lambda m, i, o: torch.zeros_like(o))  # temporal branch removed
    assert torch.equal(block(*args), out) and not torch.equal(out, x)
    hook.remove()
    with torch.no_grad():
        block.attn_temp.proj.weight.normal_()  # a non-zero temporal branch does change the output: the check can fail
    assert not torch.allclose(block(*args), out)


def test_build_model_types():
    with pytest.raises(ValueError, match="STDiT-XL/2"):
        build_model(dict(type="STDiT-XXL/2"))
    with pytest.raises(BadInput, match="hiden_size"):
        build_model(dict(type="STDiT", hiden_size=64))
    model = build_model(dict(type="STDiT", freeze="not_temporal", **TINY))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "attn_temp" in n}


def test_bad_inputs_are_errors():
    model = STDiT(**TINY).eval()
    x, t, y = tiny_inputs()
    cases = [((x[0], t, y), "x must be"), ((x[..., :7], t, y), "not divisible by patch_size"),
             ((x, t, torch.randn(2, 1, 9, 32)), "above model_max_length 8"),
             ((x, t, torch.randn(2, 1, 8, 31)), "caption_channels=32"),
             ((x, t, y, torch.ones(2, 7)), r"mask must be"), ((x, t, y, torch.ones(3, 8)), r"mask must be"),
             ((x, t[:1], y), "timestep")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            model(*args)


def test_grad_checkpointing_same_outputs_and_grads():
    model = randomized(STDiT(**TINY, class_dropout_prob=0.0)).train()
    x, t, y = tiny_inputs()
    mask = torch.tensor([[1] * 8, [1] * 3 + [0] * 5])
    results = []
    for flag in (False, True):
        model.grad_checkpointing = flag
        model.zero_grad()
        out = model(x, t, y, mask)
        (out ** 2).mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.allclose(out_a, out_b, rtol=1e-6, atol=1e-7)
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-8) for n in grads_a)
    assert grads_a["blocks.1.attn_temp.qkv.weight"].abs().sum() > 0


def test_caption_dropout_uses_null_embedding():
    model = randomized(STDiT(**TINY, class_dropout_prob=1.0))
    x, t, y = tiny_inputs()
    with torch.no_grad():
        dropped = model.train()(x, t, y)
        null = model.eval()(x, t, model.y_embedder.y_embedding[None, None].expand(2, 1, -1, -1))
        assert torch.equal(dropped, null) and not torch.allclose(null, model(x, t, y))


def test_bf16_compute_returns_float32():
    ref = randomized(STDiT(**TINY)).eval()
    model = STDiT(**TINY, dtype=torch.bfloat16).to(torch.bfloat16).eval()
    model.load_state_dict(ref.state_dict())
    x, t, y = tiny_inputs()
    with torch.no_grad():
        out, out_ref = model(x, t, y), ref(x, t, y)
    assert out.dtype == torch.float32 and rel_err(out, out_ref) < 5e-2


@pytest.mark.parametrize("short", [0, 32])
def test_fixture_under_both_attention_paths(short_keys, short):
    """v1.0's numbers (stdit_tiny_ref.pt) through either attention path, fp32."""
    ref = load_fixture("stdit_tiny_ref.pt")
    L.SHORT_KEYS = short
    m = M.STDiT(**ref["config"]).eval()
    m.load_state_dict(ref["state_dict"])
    with torch.no_grad():
        out = m(ref["x"], ref["timestep"], ref["y"], ref["mask"])
    assert rel(out, ref["out"]) < 1e-5


@pytest.mark.parametrize("ckpt", [True, 1])
def test_selective_checkpointing_same_gradients(ckpt):
    """grad_checkpointing = n recomputes the first n blocks: same loss and gradients as none (fixture weights)."""
    ref = load_fixture("stdit_tiny_ref.pt")
    m = M.STDiT(**ref["config"]).train()
    m.load_state_dict(ref["state_dict"])
    m.y_embedder.dropout_prob = 0.0
    results = []
    for setting in (False, ckpt):
        m.grad_checkpointing = setting
        m.zero_grad()
        out = m(ref["x"], ref["timestep"], ref["y"], ref["mask"])
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
    assert rel(results[1][0], results[0][0]) < 1e-6
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


# ============================================================================= checkpoints.py: loading released and own weights, resolving hub files, saving safely
def test_load_pixart_checkpoint(tmp_path, capsys):
    source = randomized(STDiT(**TINY), seed=1)
    sd = {k: v for k, v in source.state_dict().items() if ".attn_temp." not in k and k != "pos_embed_temporal"}
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"].squeeze(2)  # PixArt's 2D conv (C, C_in, 2, 2)
    sd["pos_embed"] = torch.randn(1, 7, 64)  # another resolution's table: dropped
    sd["csize_embedder.mlp.0.weight"] = torch.randn(3, 3)  # PixArt-1024-MS's size conditioning: ignored
    torch.save({"state_dict": sd}, tmp_path / "PixArt-XL-2-512x512.pth")
    model = STDiT(**TINY)
    qkv_init = model.blocks[1].attn_temp.qkv.weight.clone()
    load_checkpoint(model, str(tmp_path / "PixArt-XL-2-512x512.pth"))
    assert "attn_temp" in capsys.readouterr().out
    loaded, fresh = model.state_dict(), STDiT(**TINY).state_dict()
    for k, v in source.state_dict().items():
        if ".attn_temp." not in k and k not in CK.POS_KEYS:
            assert torch.equal(loaded[k], v), k
    assert torch.equal(loaded["pos_embed"], fresh["pos_embed"])
    assert all(torch.count_nonzero(b.attn_temp.proj.weight) == 0 for b in model.blocks)
    assert torch.equal(model.blocks[1].attn_temp.qkv.weight, qkv_init)


def test_load_safetensors_and_train_checkpoints(tmp_path):
    from safetensors.torch import save_file
    source = randomized(STDiT(**TINY), seed=2)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    other = randomized(STDiT(**TINY), seed=3)
    CK.save_checkpoint(dict(model=other.state_dict(), ema=source.state_dict(), step=5),
                      str(tmp_path / "run/step0000005.pt"))
    torch.save(dict(model=other.state_dict(), ema=other.state_dict()), tmp_path / "run/step0000002.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "run"):  # a run folder: its newest step, "ema" weights
        model = STDiT(**TINY)
        load_checkpoint(model, str(path))
        for k, v in source.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (path, k)


def test_load_open_sora_checkpoint_of_other_size(tmp_path):
    source = randomized(STDiT(**TINY), seed=4)
    torch.save(source.state_dict(), tmp_path / "OpenSora-v1-16x256x256.pth")
    cfg = dict(TINY, input_size=(2, 16, 12), space_scale=0.5)
    model = build_model(dict(type="STDiT", from_pretrained=str(tmp_path / "OpenSora-v1-16x256x256.pth")), **cfg)
    fresh = STDiT(**cfg).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in CK.POS_KEYS else source.state_dict()[k]), k
    assert model.pos_embed.shape == (1, 48, 64)


def test_foreign_checkpoints_are_errors(tmp_path):
    sd = STDiT(**TINY).state_dict()
    torch.save({"module.net." + k: v for k, v in sd.items()}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match=r"foreign key layout.*module\.net\.x_embedder\.proj\.weight"):
        load_checkpoint(STDiT(**TINY), str(tmp_path / "wrapped.pth"))
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(ValueError, match=r"linear\.pth.*unexpected \(2\): weight, bias"):
        load_checkpoint(STDiT(**TINY), str(tmp_path / "linear.pth"))
    torch.save(STDiT(**dict(TINY, hidden_size=32)).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*t_block\.1\.weight \(192, 32\)"):
        load_checkpoint(STDiT(**TINY), str(tmp_path / "small.pth"))
    with pytest.raises(BadInput, match="no-such.pth"):
        resolve_weights(str(tmp_path / "no-such.pth"))


def released_layout(model, wrap=None, extra=()):
    """A model's state dict laid out like the released DiT/Latte/PixArt files: 2D patch kernel, their own position
    tables (other sizes: dropped on load), wrapped under `wrap`."""
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("pos_embed")}
    sd["x_embedder.proj.weight"] = sd["x_embedder.proj.weight"].squeeze(2)
    sd["pos_embed"] = torch.randn(1, 5, 3)
    sd.update({k: torch.randn(2, 2) for k in extra})
    return {wrap: sd} if wrap else sd


@pytest.mark.parametrize("name,cls,config,wrap,extra", [
    ("DiT-XL-2-256x256.pt", "DiT", dict(condition="label_10"), None, ()),
    ("Latte-XL-2-256x256-ucf101.pt", "Latte", dict(condition="label_10"), "ema", ("temp_embed",)),
    ("PixArt-XL-2-512x512.pth", "PixArt", dict(caption_channels=32, model_max_length=8), "state_dict", ()),
    ("PixArt-XL-2-1024-MS.pth", "PixArtMS", dict(caption_channels=32, model_max_length=8, hidden_size=48), "state_dict",
     ())])
def test_zoo_loads_released_checkpoint_layouts(tmp_path, name, cls, config, wrap, extra):
    """The released files' layouts load into the model v1.0's configs build for them, every weight in place, the
    model's own position tables kept."""
    cls = M.MODELS[cls]
    config = dict(input_size=(2, 8, 8), depth=2, hidden_size=32, num_heads=2) | config
    source = randomized(cls(**config), seed=5)
    torch.save(released_layout(source, wrap, extra), tmp_path / name)
    model = build_model(dict(type=cls.__name__, from_pretrained=str(tmp_path / name)), **config)
    fresh = cls(**config).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k.startswith("pos_embed") else source.state_dict()[k]), k


def test_zoo_condition_swap_and_size_embedders_left_at_init(tmp_path, capsys):
    """v1.0's DiT text config starts from the class-conditional DiT-XL-2-256x256.pt: the class table is dropped, the
    caption MLP starts fresh (printed); a PixArt file into PixArtMS leaves the size embedders at init."""
    label = randomized(M.DiT(input_size=(1, 8, 8), depth=1, hidden_size=32, num_heads=2, condition="label_10"), 6)
    torch.save(released_layout(label), tmp_path / "DiT-XL-2-256x256.pt")
    text = M.DiT(input_size=(1, 8, 8), depth=1, hidden_size=32, num_heads=2, caption_channels=16)
    init = copy_state(text)
    load_checkpoint(text, str(tmp_path / "DiT-XL-2-256x256.pt"))
    out = capsys.readouterr().out
    assert "left at init (y_embedder)" in out and "ignored 1 tensors (y_embedder)" in out
    for k, v in text.state_dict().items():
        assert torch.equal(v, init[k] if k.startswith(("y_embedder", "pos_embed")) else label.state_dict()[k]), k
    pixart = randomized(M.PixArt(input_size=(1, 8, 8), depth=1, hidden_size=48, num_heads=2, caption_channels=16,
                                 model_max_length=4), 7)
    torch.save(released_layout(pixart, "state_dict"), tmp_path / "p.pth")
    ms = M.PixArtMS(input_size=(1, 8, 8), depth=1, hidden_size=48, num_heads=2, caption_channels=16, model_max_length=4)
    init = copy_state(ms)
    load_checkpoint(ms, str(tmp_path / "p.pth"))
    assert "left at init (ar_embedder, csize_embedder)" in capsys.readouterr().out
    assert torch.equal(ms.state_dict()["csize_embedder.mlp.0.weight"], init["csize_embedder.mlp.0.weight"])
    assert torch.equal(ms.state_dict()["blocks.0.attn.qkv.weight"], pixart.state_dict()["blocks.0.attn.qkv.weight"])
    half = {k: v for k, v in released_layout(label).items() if "blocks.0.attn.qkv" not in k}
    torch.save(half, tmp_path / "half.pt")  # a part missing from a file that has the rest: an error
    with pytest.raises(ValueError, match=r"missing \(2\): blocks\.0\.attn\.qkv"):
        load_checkpoint(randomized(M.DiT(input_size=(1, 8, 8), depth=1, hidden_size=32, num_heads=2,
                                         condition="label_10")), str(tmp_path / "half.pt"))


def copy_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resolve_weights_released_files(monkeypatch, tmp_path):
    """DiT's files come from Meta's URL into ./pretrained_models/ (as v1.0), Latte's from its hub repo under another name."""
    import huggingface_hub
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CK.socket, "create_connection", lambda *a, **k: io.BytesIO())  # "online"
    got = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst: got.append((url, dst)))
    assert resolve_weights("DiT-XL-2-256x256.pt") == os.path.join("pretrained_models", "DiT-XL-2-256x256.pt")
    assert got == [("https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
                    os.path.join("pretrained_models", "DiT-XL-2-256x256.pt"))]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename: f"/cache/{repo}/{filename}")
    assert resolve_weights("Latte-XL-2-256x256-ucf101.pt") == "/cache/maxin-cn/Latte/ucf101.pt"


def test_resolve_weights_hub(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(repo, filename):
        raise OSError("no network")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CK.socket, "create_connection", lambda *a, **k: io.BytesIO())  # "online"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(BadInput, match=r"huggingface\.co/hpcai-tech/Open-Sora/.*OpenSora-v1-HQ-16x256x256"):
        resolve_weights("OpenSora-v1-HQ-16x256x256.pth")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename: f"/cache/{repo}/{filename}")
    assert resolve_weights("PixArt-XL-2-512x512.pth") == "/cache/PixArt-alpha/PixArt-alpha/PixArt-XL-2-512x512.pth"

    def unreachable(address, timeout):  # offline: the host is not even tried by the hub's retrying client
        assert address == ("huggingface.co", 443) and timeout <= 5
        raise socket.gaierror("no network")
    monkeypatch.setattr(CK.socket, "create_connection", unreachable)
    with pytest.raises(BadInput, match=r"download failed \(gaierror\).*--ckpt-path PATH"):
        resolve_weights("PixArt-XL-2-512x512.pth")


class RunsCode:  # a pickle that would call os.system when loaded without weights_only
    def __reduce__(self):
        return os.system, ("echo this must never run",)


def test_reliability_bad_checkpoint_files(tmp_path):
    """Every bad --load / --ckpt file is one line naming it and why; a pickle that would run code is refused."""
    model = STDiT(**TINY)
    good = save_checkpoint(dict(model=model.state_dict(), ema=model.state_dict(), optimizer={}, step=1, epoch=0,
                                start=0, rng=[]), str(tmp_path / "good.pt"))
    blob = open(good, "rb").read()
    (tmp_path / "truncated.pt").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    torch.save([torch.ones(3)], tmp_path / "list.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # weights for sample.py, not a training checkpoint
    small = STDiT(**dict(TINY, hidden_size=32)).state_dict()  # another model size
    torch.save(dict(model=small, ema=small, optimizer={}, step=1, epoch=0, start=0, rng=[]), tmp_path / "small.pt")
    torch.save(RunsCode(), tmp_path / "code.pt")
    for name, why in [("truncated", "cannot be read .*truncated"), ("empty", r"empty file \(0 bytes"),
                      ("tensor", "not a training checkpoint .*Tensor"), ("list", "not a training checkpoint .*list"),
                      ("plain", "not a training checkpoint .*without model, ema"),
                      ("code", "pickled objects other than tensors")]:  # --load
        path = str(tmp_path / f"{name}.pt")
        assert re.search(f"^{re.escape(path)}: .*{why}", bad_input(CK.read_checkpoint, path)), name
    small = str(tmp_path / "small.pt")  # train.py checks the model of the checkpoint it read against its own
    message = bad_input(CK.fit, CK.read_checkpoint(small)["model"], model, small)
    assert message.startswith(f"{small}: foreign key layout") and "shape mismatch" in message
    for name, why in [("truncated", "cannot be read"), ("empty", "empty file"), ("tensor", "holds a Tensor, not model"),
                      ("list", "holds a list, not model"), ("code", "pickled objects")]:  # sample.py --ckpt
        assert why in bad_input(CK.read_weights, str(tmp_path / f"{name}.pt")), name
    assert CK.read_weights(str(tmp_path / "plain.pt")).keys() == model.state_dict().keys()
    assert "shape mismatch" in bad_input(load_checkpoint, model, str(tmp_path / "small.pt"))
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00")
    message = bad_input(CK.read_weights, str(tmp_path / "cut.safetensors"))
    assert "cut.safetensors: cannot be read as safetensors" in message


def test_reliability_fallback_to_the_newest_checkpoint_that_loads(tmp_path, capfd):
    """A truncated or zero-byte newest checkpoint (a kill during a copy, a full disk) is skipped, saying which and
    why, and the newest one that loads is used: by load_checkpoint (sample.py) as by train.py's --load."""
    a, b = randomized(STDiT(**TINY), seed=5), randomized(STDiT(**TINY), seed=6)
    run = tmp_path / "run"
    for step, m in ((1, a), (2, b)):
        save_checkpoint(dict(model=m.state_dict(), ema=m.state_dict(), optimizer={}, step=step, epoch=0, start=0,
                             rng=[]), str(run / f"step{step:07d}.pt"))
    blob = (run / "step0000002.pt").read_bytes()
    (run / "step0000003.pt").write_bytes(blob[:len(blob) // 3])
    (run / "step0000004.pt").write_bytes(b"")
    model = STDiT(**TINY)
    load_checkpoint(model, str(run))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in model.state_dict().items())
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2 and "skipping" in err[0] and "step0000004.pt: empty file" in err[0], err
    assert "step0000003.pt: cannot be read" in err[1] and err[1].endswith("trying " + str(run / "step0000002.pt"))
    path, ckpt = CK.newest_that_loads(str(run), CK.read_checkpoint)
    assert path.endswith("step0000002.pt") and ckpt["step"] == 2
    for f in ("step0000001.pt", "step0000002.pt"):
        (run / f).write_bytes(b"")
    message = bad_input(CK.newest_that_loads, str(run), CK.read_checkpoint)
    assert message.startswith(f"{run}: none of its 4 checkpoints loads") and "step0000001.pt: empty file" in message


def test_reliability_keep_last_prunes_but_never_the_newest_good(tmp_path):
    for step in range(1, 6):
        save_checkpoint(dict(step=step), str(tmp_path / f"step{step:07d}.pt"), keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["step0000004.pt", "step0000005.pt"]
    # a run resumed from step 5 after its step 9 was found truncated: writing step 6 keeps step 6 (the newest good),
    # prunes the older ones, and leaves the later step 9 alone (training replaces it when it gets there)
    (tmp_path / "step0000009.pt").write_bytes(b"")
    save_checkpoint(dict(step=6), str(tmp_path / "step0000006.pt"), keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["step0000006.pt", "step0000009.pt"]
    save_checkpoint(dict(step=7), str(tmp_path / "step0000007.pt"))  # keep_last=None: nothing pruned
    assert len(os.listdir(tmp_path)) == 3


def test_checkpoint_write_interrupted_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint({"step": 1, "w": torch.ones(3)}, str(tmp_path / "step0000001.pt"))

    def broken_save(obj, f, *a, **k):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(BadInput, match=r"step0000002.pt: cannot be written \(OSError: disk full\)"):  # one line
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, str(tmp_path / "step0000002.pt"))
    monkeypatch.undo()
    latest = checkpoint_files(str(tmp_path))[0]
    assert latest.endswith("step0000001.pt")
    assert torch.load(latest, weights_only=True)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["step0000001.pt"]  # no temp file left behind


def test_reliab_5_a_full_disk_is_one_line_and_the_last_good_file_stays(tmp_path, monkeypatch):
    """torch.save on a full disk raises a RuntimeError, a plain write an OSError: either is one line naming the file,
    and the last good checkpoint stays as it was, with no temp file beside it."""
    path = str(tmp_path / "step0000002.pt")
    save_checkpoint(dict(step=1), path)

    def full(obj, f):
        open(f, "wb").write(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(BadInput, match=rf"^{re.escape(path)}: cannot be written \(RuntimeError: .*file write failed"
                       r".*the last good one is kept$"):
        save_checkpoint(dict(step=2), path)

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")  # ENOSPC
    monkeypatch.setattr(errors, "open", lambda *a, **k: Full(), raising=False)
    with pytest.raises(BadInput, match=r"loss.txt: cannot be written \(OSError: \[Errno 28\] No space left"):
        errors.write_atomic(str(tmp_path / "loss.txt"), "1 0.5\n")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["step0000002.pt"] and torch.load(path, weights_only=True) == dict(step=1)


# ============================================================================= vae.py: the VAEs
TINY_VAE = dict(type="VideoAutoencoderKL", from_pretrained=None, seed=0,
                config=dict(block_out_channels=(16, 16), norm_num_groups=4, layers_per_block=1))  # down factor 2


def pixels(B=2, T=3, H=8, W=8, seed=0):
    return torch.rand(B, 3, T, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def test_vae_tiny_shapes_values_and_scale(tiny_vae):
    x = pixels()
    assert tiny_vae.patch_size == (1, 2, 2) and tiny_vae.out_channels == 4
    assert tiny_vae.get_latent_size((3, 8, 8)) == [3, 4, 4]
    z = tiny_vae.encode(x, sample=False)
    assert z.shape == (2, 4, 3, 4, 4) and z.std() > 1e-3
    # one frame through the 2D VAE by hand: frame (b, t) lands at z[b, :, t], scaled by SD's 0.18215
    frame = tiny_vae.module.encode(x[1, :, 2][None]).latent_dist.mean[0] * 0.18215
    assert rel_err(z[1, :, 2], frame) < 1e-5
    zs = tiny_vae.encode(x)  # v1.0's default: a posterior sample
    assert zs.shape == z.shape and not torch.allclose(zs, z)
    out = tiny_vae.decode(z)
    assert out.shape == x.shape and out.std() > 1e-3
    ref = tiny_vae.module.decode(z[0, :, 1][None] / 0.18215).sample[0]
    assert rel_err(out[0, :, 1], ref) < 1e-5
    assert not any(p.requires_grad for p in tiny_vae.parameters()) and not tiny_vae.module.training


def test_vae_micro_batches_equal_one_batch():
    x = pixels(B=2, T=3)  # 6 frames: micro-batches of 4 and 2
    whole = V.build_vae(TINY_VAE)
    micro = V.build_vae(TINY_VAE | dict(micro_batch_size=4))
    z = whole.encode(x, sample=False)
    assert rel_err(micro.encode(x, sample=False), z) < 1e-6
    assert rel_err(micro.decode(z), whole.decode(z)) < 1e-6


def test_temporal_decoder_vae_mixes_frames_of_a_clip_only():
    """VideoAutoencoderKLTemporalDecoder: per-frame encoder; its decoder mixes the frames of a clip (a change in frame 0
    reaches frame 2) but never clips of a batch; micro-batches hold whole clips and give the same result."""
    cfg = dict(type="VideoAutoencoderKLTemporalDecoder", from_pretrained=None,
               config=dict(block_out_channels=(32, 32), layers_per_block=1))
    vae, micro = V.build_vae(cfg), V.build_vae(cfg | dict(micro_batch_size=4))  # 4 frames: one 3-frame clip a call
    x = pixels(B=2, T=3, H=16, W=16)
    z = vae.encode(x, sample=False)
    assert z.shape == (2, 4, 3, 8, 8) and vae.patch_size == (1, 2, 2)
    frame = vae.module.encode(x[1, :, 2][None]).latent_dist.mean[0] * 0.18215
    assert rel_err(z[1, :, 2], frame) < 1e-5
    out = vae.decode(z)
    assert out.shape == x.shape and rel_err(micro.decode(z), out) < 1e-5
    z2 = z.clone()
    z2[0, :, 0] += 1
    out2 = vae.decode(z2)
    assert not torch.allclose(out2[0, :, 2], out[0, :, 2]) and torch.equal(out2[1], out[1])
    sd = V.build_vae(TINY_VAE | dict(config=TINY_VAE["config"] | dict(block_out_channels=(32, 32), norm_num_groups=8)))
    z = sd.encode(x, sample=False)
    z2 = z.clone()
    z2[0, :, 0] += 1
    assert torch.equal(sd.decode(z2)[0, :, 2], sd.decode(z)[0, :, 2])  # the SD VAE: frame by frame


def test_vae_deterministic_build_and_global_rng_untouched():
    torch.manual_seed(1234)  # not the state a build without a private RNG would leave behind
    state = torch.get_rng_state()
    a, b = V.build_vae(TINY_VAE).state_dict(), V.build_vae(TINY_VAE).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = V.build_vae(TINY_VAE | dict(seed=1)).state_dict()
    assert not torch.equal(a["module.encoder.conv_in.weight"], c["module.encoder.conv_in.weight"])


def test_identity_vae_round_trip():
    vae = V.build_vae(dict(type="identity"))
    x = pixels()
    assert vae.out_channels == 3 and vae.patch_size == (1, 1, 1)
    assert vae.get_latent_size((3, 8, 8)) == [3, 8, 8]
    assert torch.equal(vae.decode(vae.encode(x)), x)
    scaled = V.build_vae(dict(type="identity", scale=4.0))  # the demo's: pixels x4 (a power of 2: exact)
    assert torch.equal(scaled.encode(x), 4 * x) and torch.equal(scaled.decode(scaled.encode(x)), x)


def test_vae_latent_size_not_divisible(tiny_vae):
    with pytest.raises(ValueError, match=r"\(3, 9, 8\).*not divisible.*\(1, 2, 2\)"):
        tiny_vae.get_latent_size((3, 9, 8))


# ============================================================================= text.py: T5, CLIP and class encoders, caption cleaning
TINY_T5 = dict(type="t5", from_pretrained=None, model_max_length=16, seed=0,
               config=dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))


CAPTIONS = ["a red circle moving right", "a blue square", "x" * 40]  # the last one is truncated to L


@pytest.fixture(scope="module")
def tiny_t5():
    return TX.build_text_encoder(TINY_T5)


def test_t5_encode_shapes_and_mask(tiny_t5):
    L = TINY_T5["model_max_length"]
    out = tiny_t5.encode(CAPTIONS)
    y, mask = out["y"], out["mask"]
    assert y.shape == (3, 1, L, 32) and y.dtype == torch.float32 and tiny_t5.output_dim == 32
    assert mask.shape == (3, L) and mask.dtype == torch.int64
    counts = [min(len(c.encode("utf-8")) + 1, L) for c in CAPTIONS]  # ByT5: one token per byte, + EOS, capped at L
    assert mask.sum(1).tolist() == counts
    assert all(mask[i, :n].all() and not mask[i, n:].any() for i, n in enumerate(counts))  # padding on the right
    assert y.std() > 0.1 and rel_err(y[0], y[1]) > 0.1  # different captions, different embeddings
    assert not any(p.requires_grad for p in tiny_t5.model.parameters()) and not tiny_t5.model.training


def test_t5_deterministic_build_and_global_rng_untouched(tiny_t5):
    torch.manual_seed(1234)  # not the state a build without a private RNG would leave behind
    state = torch.get_rng_state()
    other = TX.build_text_encoder(TINY_T5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(other.encode(CAPTIONS)["y"], tiny_t5.encode(CAPTIONS)["y"])
    reseeded = TX.build_text_encoder(TINY_T5 | dict(seed=1))
    assert rel_err(reseeded.encode(CAPTIONS)["y"], tiny_t5.encode(CAPTIONS)["y"]) > 0.1


def test_random_encoders_equal_across_processes(tiny_t5, tiny_vae):
    # train.py and sample.py run in different processes and must build the very same random encoders
    code = (f"import sys, torch; sys.path.insert(0, {str(ROOT)!r}); import text, vae\n"
            f"torch.manual_seed(123)\n"  # a different global RNG state must not matter
            f"t = text.build_text_encoder({TINY_T5!r}); v = vae.build_vae({TINY_VAE!r})\n"
            f"print(repr([float(p.double().sum()) for p in list(t.model.parameters()) + list(v.parameters())]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    here = [float(p.double().sum()) for p in list(tiny_t5.model.parameters()) + list(tiny_vae.parameters())]
    assert eval(run.stdout.strip().splitlines()[-1]) == here


def test_t5_dtype_argument():
    enc = TX.build_text_encoder(TINY_T5, dtype=torch.bfloat16)
    assert enc.encode(CAPTIONS[:1])["y"].dtype == torch.bfloat16
    # v1.0's inference runs T5 in fp32 (sample.py passes no dtype); text_encoder.dtype='bf16' halves its memory
    assert TX.build_text_encoder(TINY_T5).encode(CAPTIONS[:1])["y"].dtype == torch.float32
    assert TX.build_text_encoder(TINY_T5 | dict(dtype="bf16"), dtype=torch.float32).model.dtype == torch.bfloat16
    cfg = load_config(str(ROOT / "configs/opensora/inference/16x256x256.py"), ["--text_encoder.dtype=fp16", "--ckpt=x"])
    with pytest.raises(BadInput, match="text_encoder.dtype='fp16': .*overflows in fp16"):
        validate(cfg, "sample")


def test_t5_runs_fp16_as_bf16():
    # T5 v1.1 overflows fp16: a run dtype of fp16 handed down (train.py, prepare.py) gives a bf16 T5
    assert TX.t5_dtype(torch.float16) == torch.bfloat16
    assert TX.t5_dtype(torch.float32) == torch.float32 and TX.t5_dtype(torch.bfloat16) == torch.bfloat16
    enc = TX.build_text_encoder(TINY_T5, dtype=torch.float16)
    assert all(p.dtype == torch.bfloat16 for p in enc.model.parameters())
    assert enc.encode(CAPTIONS[:1])["y"].dtype == torch.bfloat16


def test_t5_null_embedding(tiny_t5):
    with pytest.raises(RuntimeError, match="y_embedder"):
        tiny_t5.null(2)
    emb = torch.randn(TINY_T5["model_max_length"], 32)
    tiny_t5.y_embedder = types.SimpleNamespace(y_embedding=emb)  # stands in for model.y_embedder
    try:
        null = tiny_t5.null(3)
    finally:
        tiny_t5.y_embedder = None
    assert null.shape == (3, 1, 16, 32) and all(torch.equal(null[i, 0], emb) for i in range(3))


@pytest.mark.parametrize("caption, cleaned", [  # outputs of v1.0's T5Embedder.text_preprocessing (clean twice)
    ("A Cat, sitting on a mat... (photo) by @john https://x.com/a.jpg", "a cat, sitting on a mat photo by ."),
    ("this-is-my-cute-cat_ok", "this is my cute cat ok"),
    ("c++ code 1920x1080 &amp; more", "c code more"),
    ("Free shipping worldwide!! click for more", "worldwide!!"),
    ("'quoted'", "quoted"),
    ("The sun sets over the ocean,waves crash.", "the sun sets over the ocean, waves crash."),
])
def test_clean_caption_like_v1(caption, cleaned):
    assert TX.clean_caption(caption) == cleaned


HARD_CAPTIONS = [  # v1.0's cleaning (ftfy 6.3.1, beautifulsoup4 4.15) of captions where a hand-written one slips
    ("R&D team at AT&T", "r d team at att"),  # '&T' at the end: the HTML parser drops the bare '&'
    ("Tom &amp; Jerry &lt;3", "tom jerry <3"),
    ("<p>a <b>bold</b> move</p><script>var x=1</script>", "a bold move"),
    ("\ufb01ne \ufb02owers in a \ufb01eld", "fine flowers in a field"),
    ("\u201cSmart\u201d quotes \u2018here\u2019", "smart\" quotes 'here"),
    ("\uff26\uff55\uff4c\uff4c \uff57\uff49\uff44\uff54\uff48", "full width"),
    ("price \x80 5 \x96 cheap", "price \u20ac 5 - cheap"),
    ("&#65;&#x42; c &copy; d &t; e &", "ab c d t e"),
    ("a <![CDATA[raw]]> b", "a raw b"),
    ("tab\there\x07bell", "tab herebell"),
]


@pytest.mark.parametrize("caption, cleaned", HARD_CAPTIONS)
def test_clean_caption_hard_cases_with_and_without_the_libraries(caption, cleaned, monkeypatch):
    assert TX.clean_caption(caption) == cleaned  # with ftfy and bs4 when installed, else by hand
    monkeypatch.setattr(TX, "ftfy", None)
    monkeypatch.setattr(TX, "BeautifulSoup", None)
    assert TX.clean_caption(caption) == cleaned  # by hand


def test_t5_cleans_before_tokenizing(tiny_t5):
    a, b = tiny_t5.encode(["A Red Circle!!"]), tiny_t5.encode(["a red circle!!"])
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["mask"], b["mask"])


# ============================================================================= diffusion.py: IDDPM and DPM-Solver against v1.0 and diffusers
def iddpm_fake_model(consts, seen=None):
    a, b, c = consts["a"], consts["b"], consts["c"]

    def f(x, t, **kwargs):
        if seen is not None:
            seen.append(t.clone())
        tt = (t / 1000).float().view(-1, *[1] * (x.ndim - 1))
        return torch.cat([torch.tanh(a * x + b * tt), 2 * torch.sigmoid(c * x) - 1], dim=1)
    return f


def per_sample_mean(y, x):
    return y.reshape(len(y), -1).mean(1).view(-1, *[1] * (x.ndim - 1))


def test_iddpm_training_losses_match_original():
    ref = load_fixture("iddpm_ref.pt")
    f = iddpm_fake_model(ref["fake_model"])
    losses = IDDPM(timestep_respacing="").training_losses(f, ref["x_start"], ref["t"], model_kwargs={}, noise=ref["noise"])
    for key in ("loss", "mse", "vb"):
        check(f"losses[{key}]", losses[key], ref["losses"][key])


def test_iddpm_p_mean_variance_and_timestep_map_match_original():
    ref = load_fixture("iddpm_ref.pt")
    d = IDDPM(num_sampling_steps=ref["num_sampling_steps"])
    assert d.num_timesteps == ref["num_sampling_steps"]
    assert torch.equal(torch.tensor(d.timestep_map), ref["timestep_map"]), d.timestep_map
    x = ref["x"]
    for i, want in ref["p_mean_variance"].items():
        seen = []
        out = d.p_mean_variance(iddpm_fake_model(ref["fake_model"], seen), x, torch.full((len(x),), i),
                                clip_denoised=False, model_kwargs={})
        for key in ("mean", "variance", "log_variance", "pred_xstart"):
            check(f"p_mean_variance[{i}][{key}]", out[key], want[key])
        assert seen[0].dtype == want["model_t"].dtype and torch.equal(seen[0], want["model_t"]), seen[0]


def test_iddpm_sample_loop_matches_original():
    ref = load_fixture("iddpm_ref.pt")
    seen = []
    d = IDDPM(num_sampling_steps=ref["num_sampling_steps"])
    torch.manual_seed(ref["sample_seed"])
    out = d.p_sample_loop(iddpm_fake_model(ref["fake_model"], seen), ref["z"].shape, noise=ref["z"],
                          clip_denoised=False, model_kwargs={}, device="cpu", progress=False)
    check("p_sample_loop", out, ref["sample"])
    assert [int(t[0]) for t in seen] == [int(t) for t in ref["model_timesteps_in_loop"]]
    assert all(bool((t == t[0]).all()) for t in seen)


def test_forward_with_cfg_matches_original():
    ref = load_fixture("iddpm_ref.pt")
    cfg, k = ref["cfg"], ref["fake_model"]

    class Fake(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.cat([torch.tanh(k["a"] * x + per_sample_mean(y, x)), torch.sigmoid(k["c"] * x)], dim=1)

    x = cfg["x"]
    out = forward_with_cfg(Fake(), x, torch.full((len(x),), cfg["t"]), cfg["y"], cfg["cfg_scale"])
    check("forward_with_cfg", out, cfg["out"])


def test_iddpm_clips_by_default_but_sample_does_not(monkeypatch):
    # v1.0: p_mean_variance and p_sample_loop default to clip_denoised=True; its sample() passes False
    d, f = IDDPM(num_sampling_steps=5), iddpm_fake_model(dict(a=0.6, b=1.1, c=0.8))
    x = 5 * torch.randn(2, 4, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # pred_xstart well outside [-1, 1]
    t = torch.full((2,), 4)
    clipped, raw = d.p_mean_variance(f, x, t)["pred_xstart"], d.p_mean_variance(f, x, t, clip_denoised=False)["pred_xstart"]
    assert clipped.abs().max() <= 1 < raw.abs().max() and torch.equal(clipped, raw.clamp(-1, 1))
    torch.manual_seed(0)
    default = d.p_sample_loop(f, x.shape, noise=x, progress=False)
    torch.manual_seed(0)
    assert torch.equal(default, d.p_sample_loop(f, x.shape, noise=x, clip_denoised=True, progress=False))
    seen, loop = [], d.p_sample_loop
    monkeypatch.setattr(d, "p_sample_loop", lambda *a, **k: seen.append(k["clip_denoised"]) or loop(*a, **k))
    text = types.SimpleNamespace(encode=lambda p: dict(y=torch.zeros(len(p), 1, 3, 5)),
                                 null=lambda n: torch.ones(n, 1, 3, 5))
    d.sample(lambda x, t, y: f(x, t), text, (4, 1, 2, 2), ["a", "b"], "cpu", progress=False)
    assert seen == [False]


def test_dpm_solver_matches_original():
    ref = load_fixture("dpms_ref.pt")
    k, s = ref["fake_model"], ref["settings"]
    assert (s["skip_type"], s["method"]) == ("time_uniform", "multistep"), "only what v1.0 uses is implemented"
    seen = []

    def g(x, timestep, y):
        seen.append(timestep.clone())
        tt = timestep.view(-1, *[1] * (x.ndim - 1))
        return torch.tanh(k["a"] * x + k["b"] * per_sample_mean(y, x) + k["c"] * tt / 1000)

    out = dpm_solver_sample(g, ref["z"], ref["y"], ref["y_null"], s["cfg_scale"], s["steps"], order=s["order"],
                            model_kwargs={}, progress=False)
    check("dpm_solver", out, ref["out"])
    assert len(seen) == len(ref["model_timesteps"])
    for got, want in zip(seen, ref["model_timesteps"]):
        assert got.dtype == torch.float32
        assert torch.allclose(got, torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-4), (got, want)


def tiny_stdit_and_text_encoder():
    pytest.importorskip("model", reason="model.py not written yet")
    from model import STDiT
    pipe = load_fixture("stdit_pipeline_ref.pt")
    tiny = load_fixture(pipe["model_fixture"])
    model = STDiT(**tiny["config"])
    model.load_state_dict(tiny["state_dict"])
    model.eval()

    class TextEncoder:  # the README's stand-in: stored captions, null = the model's learned null caption
        def encode(self, prompts):
            assert len(prompts) == len(pipe["y"])
            return dict(y=pipe["y"].clone(), mask=pipe["mask"].clone())

        def null(self, n):
            return model.y_embedder.y_embedding[None].repeat(n, 1, 1)[:, None]

    return pipe, model, TextEncoder()


def recording(model, seen):
    def call(x, t, y, **kwargs):
        seen.append(t.clone())
        return model(x, t, y, **kwargs)
    return call


def test_iddpm_sample_with_tiny_stdit_matches_original():
    pipe, model, text_encoder = tiny_stdit_and_text_encoder()
    ref, seen = pipe["iddpm"], []
    n, z_size = ref["z"].shape[0], tuple(ref["z"].shape[1:])
    scheduler = build_scheduler(dict(type="iddpm", num_sampling_steps=ref["num_sampling_steps"], cfg_scale=ref["cfg_scale"]))
    assert torch.equal(torch.tensor(scheduler.timestep_map), ref["timestep_map"])
    torch.manual_seed(ref["seed"])
    with torch.no_grad():
        out = scheduler.sample(recording(model, seen), text_encoder, z_size, [f"prompt {i}" for i in range(n)], "cpu",
                               progress=False)
    check("iddpm.sample (tiny STDiT)", out, ref["out"])
    assert torch.equal(torch.stack(seen), ref["model_timesteps"]) and seen[0].dtype == torch.int64


def test_dpm_solver_sample_with_tiny_stdit_matches_original():
    pipe, model, text_encoder = tiny_stdit_and_text_encoder()
    ref, seen = pipe["dpms"], []
    assert (ref["order"], ref["skip_type"], ref["method"], ref["algorithm_type"]) == (2, "time_uniform", "multistep", "dpmsolver++")
    n, z_size = ref["z"].shape[0], tuple(ref["z"].shape[1:])
    scheduler = build_scheduler(dict(type="dpm-solver", num_sampling_steps=ref["num_sampling_steps"], cfg_scale=ref["cfg_scale"]))
    torch.manual_seed(ref["seed"])
    with torch.no_grad():
        out = scheduler.sample(recording(model, seen), text_encoder, z_size, [f"prompt {i}" for i in range(n)], "cpu",
                               progress=False)
    check("dpm-solver.sample (tiny STDiT)", out, ref["out"])
    assert torch.allclose(torch.stack(seen), ref["model_timesteps"], rtol=0, atol=1e-4)


def test_iddpm_tables_match_diffusers_ddpm():
    # diffusers builds the same linear schedule in float32 torch; ours is float64 numpy, so agreement is to float32
    # rounding (~1e-7 relative; cumprod over 1000 steps accumulates a few ulp): tolerance 1e-5.
    diffusers = pytest.importorskip("diffusers")
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    d = IDDPM()
    check("betas", torch.from_numpy(d.betas), s.betas)
    check("alphas_cumprod", torch.from_numpy(d.alphas_cumprod), s.alphas_cumprod)
    t = torch.arange(1, 1000)  # t = 0 has posterior variance 0 (diffusers clamps it to 1e-20)
    var = torch.stack([s._get_variance(int(i), variance_type="fixed_small") for i in t])
    check("posterior_variance", torch.from_numpy(d.posterior_variance[1:]), var)
    abar, abar_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    # diffusers' step() coefficients of the posterior mean: x0 gets sqrt(abar_prev) * beta_t / (1 - abar_t), x_t gets
    # sqrt(alpha_t) * (1 - abar_prev) / (1 - abar_t). In float32, 1 - abar_t near t = 0 (~1e-4) cancels: diffusers'
    # value carries ~eps32 / (1 - abar_t) relative error, so we bound each element's relative error times
    # (1 - abar_t) by 1e-6 (~16 float32 ulps; measured 3e-7).
    for name, ours, theirs in [("posterior_mean_coef1", d.posterior_mean_coef1, abar_prev.sqrt() * s.betas[t] / (1 - abar)),
                               ("posterior_mean_coef2", d.posterior_mean_coef2, s.alphas[t].sqrt() * (1 - abar_prev) / (1 - abar))]:
        rel = (torch.from_numpy(ours[1:]) - theirs.double()).abs() / theirs.double().abs()
        scaled = (rel * (1 - abar.double())).max().item()
        print(f"{name}: max rel err * (1 - abar) {scaled:.2e}")
        assert scaled < 1e-6, f"{name}: {scaled:.2e}"


def test_iddpm_respaced_sampling_matches_diffusers_ddpm_steps():
    # diffusers' DDPMScheduler with custom timesteps = our timestep_map and variance_type="learned_range" computes the
    # same respaced step: beta'_t = 1 - abar_t / abar_prev, learned-range log variance between the posterior
    # variance and beta'_t, the posterior mean, + exp(0.5 log var) * noise. We feed both the same model and the same
    # noise draws (the last step adds none) and compare every step. The only differences are diffusers' float32
    # tables vs our float64 ones: tolerance 1e-5.
    diffusers = pytest.importorskip("diffusers")
    d = IDDPM(num_sampling_steps=7)
    s = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                variance_type="learned_range", clip_sample=False, prediction_type="epsilon")
    s.set_timesteps(timesteps=d.timestep_map[::-1])
    f = iddpm_fake_model(dict(a=0.6, b=1.1, c=0.8))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 2, 3, 3, generator=gen)
    ours = theirs = x
    for i, t in zip(range(d.num_timesteps)[::-1], s.timesteps):
        step_noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i))
        p = d.p_mean_variance(f, ours, torch.full((len(x),), i), clip_denoised=False)  # diffusers: clip_sample=False
        ours = p["mean"] + (i != 0) * torch.exp(0.5 * p["log_variance"]) * step_noise
        theirs = s.step(f(theirs, torch.full((len(x),), int(t))), int(t), theirs,
                        generator=torch.Generator().manual_seed(100 + i)).prev_sample
        check(f"DDPM step t={int(t)}", ours, theirs)


def dpms_exact_model(x0_star, log_abar):
    """The exact noise predictor when all data is one point x0*: eps = (x - alpha_t x0*) / sigma_t, with log alpha
    interpolated linearly in the model time over the 1000 discrete steps (the schedule both solvers assume)."""
    def eps(x, t_in, y):
        la = torch.from_numpy(np.interp(t_in.double().numpy(), np.arange(1000), 0.5 * log_abar)).view(-1, *[1] * (x.ndim - 1))
        return ((x.double() - la.exp() * x0_star) / (1 - (2 * la).exp()).sqrt()).float()
    return eps


def test_dpm_solver_lands_on_closed_form_for_single_point_data():
    # With data = one point x0*, the exact denoiser predicts x0* at every t, so DPM-Solver++'s update is the exact
    # ODE solution: x_end = alpha_end x0* + sigma_end (z - alpha_1 x0*) / sigma_1, with t_end = 1/1000 (abar[0]) and
    # t = 1 (abar[999]). Any wrong coefficient, sign, or order-2 correction (D must be 0 here) shows. float32 over
    # a few steps: tolerance 1e-5. Guidance with y == y_null is a no-op, so cfg_scale must not matter.
    log_abar = np.log(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))  # independent of diffusion.py
    x0_star = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0)).double()
    z = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(1, 1, 2, 3)
    a_end, a_1 = np.exp(0.5 * log_abar[0]), np.exp(0.5 * log_abar[-1])
    want = a_end * x0_star + np.sqrt(1 - a_end ** 2) * (z.double() - a_1 * x0_star) / np.sqrt(1 - a_1 ** 2)
    for steps in (3, 12):
        out = dpm_solver_sample(dpms_exact_model(x0_star, log_abar), z, y, y, 4.0, steps, progress=False)
        check(f"DPM-Solver++ single-point data, {steps} steps", out, want)


def test_dpm_solver_matches_diffusers_multistep():
    # Same solver in diffusers: DPMSolverMultistepScheduler(dpmsolver++, order 2, midpoint, lower_order_final) with 9
    # steps: its grid 999, 888, ..., 111 then sigma_min (= abar[0]) is exactly our time-uniform grid in model time
    # (t - 1/1000) * 1000 = 999, 888, ..., 0, and with 9 < 10 steps both do first order at the first and last step.
    # Our model times are float32 (888.00006 ...) where diffusers' are integers, and diffusers' tables are float32:
    # agreement to ~1e-6, tolerance 1e-5. The model is a generic nonlinear noise predictor with guidance.
    diffusers = pytest.importorskip("diffusers")
    s = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                              beta_schedule="linear", solver_order=2, algorithm_type="dpmsolver++",
                                              solver_type="midpoint", lower_order_final=True,
                                              final_sigmas_type="sigma_min", timestep_spacing="linspace")
    steps, scale = 9, 3.0
    s.set_timesteps(steps)
    assert s.timesteps.tolist() == [999 - 111 * k for k in range(steps)]

    def g(x, t, y):
        return torch.tanh(0.7 * x + per_sample_mean(y, x) + 0.9 * t.view(-1, *[1] * (x.ndim - 1)) / 1000)

    gen = torch.Generator().manual_seed(5)
    z, y, y_null = torch.randn(2, 4, 2, 3, 3, generator=gen), torch.randn(2, 1, 4, 8, generator=gen), torch.randn(2, 1, 4, 8, generator=gen)
    ours = dpm_solver_sample(g, z, y, y_null, scale, steps, progress=False)
    x = z
    for t in s.timesteps:
        tt = torch.full((len(x),), float(t))
        eps_u, eps_c = g(x, tt, y_null), g(x, tt, y)
        x = s.step(eps_u + scale * (eps_c - eps_u), t, x).prev_sample
    check("DPM-Solver++ vs diffusers", ours, x)


def test_respacing_rules():
    # N steps keep round(k * 999 / (N - 1)) with Python's round (half to even) on a running float sum
    assert space_timesteps(1000, "10") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "6") == [0, 200, 400, 599, 799, 999]  # 999/5 * 3 = 599.4 -> 599
    assert space_timesteps(10, "4") == [0, 3, 6, 9]
    assert space_timesteps(6, "5") == [0, 1, 2, 4, 5]  # round(2.5) = 2 (half to even), round(3.75) = 4
    assert space_timesteps(1000, "") == list(range(1000))
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(100, "2,3") == [0, 49, 50, 74, 99]  # two sections of 50
    assert space_timesteps(100, "0,2") == [50, 99]  # a section may keep nothing
    assert IDDPM(num_sampling_steps=10).timestep_map == IDDPM(timestep_respacing="10").timestep_map
    assert IDDPM().num_timesteps == 1000
    d = IDDPM(num_sampling_steps=2)
    # respaced betas: beta'_i = 1 - abar[t_i] / abar[t_{i-1}]
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(d.betas, [1 - abar[0], 1 - abar[999] / abar[0]], rtol=1e-12)
    with pytest.raises(ValueError, match="ddim600"):  # no integer stride gives 600 of 1000
        space_timesteps(1000, "ddim600")
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(10, "11")
    with pytest.raises(ValueError, match="not both"):
        IDDPM(num_sampling_steps=10, timestep_respacing="20")


def test_bad_scheduler_input_is_a_clear_error():
    with pytest.raises(ValueError, match="give one of iddpm, dpm-solver"):
        build_scheduler(dict(type="ddim"))
    for kwargs in (dict(noise_schedule="squaredcos_cap_v2"), dict(use_kl=True), dict(learn_sigma=False),
                   dict(predict_xstart=True), dict(rescale_learned_sigmas=True), dict(sigma_small=True)):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            IDDPM(**kwargs)
    with pytest.raises(BadInput, match="timestep_respacing"):
        build_scheduler(dict(type="dpm-solver", timestep_respacing="10"))
    with pytest.raises(ValueError, match="order"):
        dpm_solver_sample(lambda x, t, y: x, torch.zeros(1, 1, 1, 1, 1), None, None, 1.0, 1, order=2)
    with pytest.raises(ValueError, match="pred_sigma"):  # a model without the variance channels
        IDDPM(num_sampling_steps=2).p_mean_variance(lambda x, t: x, torch.zeros(1, 4, 1, 2, 2), torch.tensor([1]))
    assert isinstance(build_scheduler(dict(type="iddpm", num_sampling_steps=5)), IDDPM)
    assert build_scheduler(dict(type="dpm-solver")).num_sampling_steps == 20
    assert diffusion.SCHEDULERS == {"iddpm": IDDPM, "dpm-solver": DPMSolver}


def test_samplers_pass_model_kwargs_and_additional_args():
    # mask from the text encoder and additional_args both reach the model, on both samplers
    got = []

    def model(x, t, y, mask=None, extra=None):
        got.append((mask is not None, extra))
        return torch.zeros(len(x), 2 * x.shape[1], *x.shape[2:])

    class Text:
        def encode(self, prompts):
            return dict(y=torch.zeros(len(prompts), 1, 3, 5), mask=torch.ones(len(prompts), 3, dtype=torch.long))

        def null(self, n):
            return torch.zeros(n, 1, 3, 5)

    for sched in (IDDPM(num_sampling_steps=2), DPMSolver(num_sampling_steps=2)):
        got.clear()
        out = sched.sample(model, Text(), (4, 1, 2, 2), ["a", "b"], "cpu", additional_args=dict(extra=7), progress=False)
        assert out.shape == (2, 4, 1, 2, 2)
        assert got and all(g == (True, 7) for g in got), got


def mask_fixture_model(ref):
    model = STDiT(**ref["config"])
    model.load_state_dict(ref["state_dict"])
    return model.eval()


def test_iddpm_masked_training_losses_match_v11_fixture():
    ref = load_fixture("iddpm_mask_ref.pt")
    tr, model, seen = ref["training"], mask_fixture_model(ref), {}
    scheduler = IDDPM(timestep_respacing="")
    for key, table in tr["schedule"].items():
        assert np.allclose(getattr(scheduler, key), table.numpy(), rtol=1e-12), key

    def recorded(x, t, **kwargs):
        seen.update(x_t=x, t=t, out=model(x, t, **kwargs))
        return seen["out"]
    kwargs = dict(y=tr["y"], mask=tr["caption_mask"])
    with torch.no_grad():
        for name, model_kwargs, mask in [("losses", dict(kwargs, x_mask=tr["mask"]), tr["mask"]),
                                         ("losses_nomask", kwargs, None), ("losses_scheduler_mask_only", kwargs, tr["mask"])]:
            got = scheduler.training_losses(recorded, tr["x_start"], tr["t"], model_kwargs, tr["noise"], mask=mask)
            for key in ("loss", "mse", "vb"):
                check(f"{name}.{key}", got[key], tr[name][key])
            if name == "losses":
                check("model x_t", seen["x_t"], tr["model_x_t"]), check("model out", seen["out"], tr["model_out"])
                assert torch.equal(seen["t"], tr["model_t"])


def test_mask_generator_draws_match_v11_fixture():
    ref = load_fixture("iddpm_mask_ref.pt")["mask_generator"]
    assert list(ref["mask_ratios"]) == ref["mask_ratios_order"]
    import train
    rng = random.Random(ref["seed"])  # one stream over all draws, as the original's random.seed
    for k, draw in enumerate(ref["draws"]):
        assert torch.equal(train.frame_masks(ref["mask_ratios"], draw["B"], draw["T"], rng), draw["masks"]), k


def test_iddpm_masked_sampling_matches_v11_fixture():
    ref = load_fixture("iddpm_mask_ref.pt")
    model = mask_fixture_model(ref)
    null = lambda n: model.y_embedder.y_embedding[None].repeat(n, 1, 1)[:, None]  # noqa: E731
    for run in ref["sampling"]["runs"]:
        n, seen = run["n"], []
        scheduler = IDDPM(num_sampling_steps=run["num_sampling_steps"], cfg_scale=run["cfg_scale"],
                          cfg_channel=run["cfg_channel"])
        assert torch.equal(torch.tensor(scheduler.timestep_map), run["timestep_map"])
        for key in ("betas", "alphas_cumprod", "posterior_mean_coef1"):
            assert np.allclose(getattr(scheduler, key), run[key].numpy(), rtol=1e-12), key
        torch.manual_seed(run["seed"])
        z = torch.randn(run["z_noise"].shape)
        assert torch.equal(z, run["z_noise"])
        masks = None
        if run["mask_strategy"] is not None:
            masks = diffusion.apply_mask_strategy(z, run["refs"], run["mask_strategy"], run["loop_i"])
            assert torch.equal(masks, run["masks"]) and torch.equal(z, run["z"])

        def recorded(x, t, y, **kwargs):
            seen.append((t.clone(), kwargs.get("x_mask")))
            return model(x, t, y, **kwargs)
        with torch.no_grad():
            out = scheduler.sample(recorded, types.SimpleNamespace(null=null), None, [""] * n, "cpu", progress=False,
                                   encoded=dict(y=run["y"], mask=run["caption_mask"]), z=z, mask=masks)
        assert torch.equal(torch.stack([t for t, _ in seen]), run["model_timesteps"])
        if masks is not None:
            assert torch.equal(torch.stack([m for _, m in seen]), run["model_x_mask"])
        err = max(rel_err(out[i, :, f], run["out"][i, :, f]) for i in range(n) for f in range(out.shape[2]))
        print(f"{run['name']}: worst (sample, frame) rel err {err:.2e}")
        assert err < 1e-5, run["name"]


# ============================================================================= stepcache.py: caching across denoising steps (PAB, TeaCache)
import stepcache  # noqa: E402

# each preset's stated error on this model, relative to exact (measured: 0.03-0.05, 0.08-0.12, 0.002-0.003)
CACHE_ERR = {"pab": 0.1, "pab-fast": 0.2, "teacache:0.1": 0.02}


@pytest.fixture(scope="module")
def toy_trained():
    """A tiny STDiT trained 30 steps on toy clips (4 colours x 4 directions, 4 frames of 8x8, pixel space), and a
    text encoder of fixed random captions: smooth across steps as a trained model is, unlike random weights."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: 20x faster on one thread than on two shared cores
    model = STDiT(input_size=(4, 8, 8), in_channels=3, depth=2, hidden_size=32, num_heads=2, caption_channels=16,
                  model_max_length=4)
    prompts = [f"a {c} circle moving {d}" for c in toy.COLOURS for d in toy.DIRECTIONS]
    captions = torch.randn(len(prompts), 1, 4, 16)
    rng = np.random.default_rng(0)
    clips = torch.stack([torch.from_numpy(toy.shape_clip(p.split()[1], "circle", p.split()[-1], rng, 4, 8))
                         for p in prompts]).permute(0, 4, 1, 2, 3).float() / 64 - 2  # (16, 3, 4, 8, 8), ~unit scale
    opt, iddpm = torch.optim.Adam(model.parameters(), lr=3e-3), IDDPM(timestep_respacing="")
    for _ in range(30):
        t = torch.randint(0, 1000, (16,))
        loss = iddpm.training_losses(model, clips, t, dict(y=captions, mask=torch.ones(16, 4)))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)

    class Text:
        def encode(self, ps):
            return dict(y=captions[[prompts.index(p) for p in ps]], mask=torch.ones(len(ps), 4, dtype=torch.long))

        def null(self, n):
            return model.y_embedder.y_embedding[None].repeat(n, 1, 1)[:, None]

    return model.eval(), Text(), prompts[::4]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cached_sample(model, text_encoder, prompts, sampler, steps, spec):
    with torch.no_grad(), stepcache.attached(model, spec, steps) as state:
        z = build_scheduler(dict(type=sampler, num_sampling_steps=steps, cfg_scale=4.0)).sample(
            model, text_encoder, (3, 4, 8, 8), prompts, "cpu", progress=False,
            generators=[torch.Generator().manual_seed(k) for k in range(len(prompts))])
    return z, state


@pytest.mark.parametrize("sampler,steps", [("dpm-solver", 10), ("iddpm", 20)])
def test_stepcache_off_is_exact_and_presets_within_stated_error(toy_trained, sampler, steps, one_thread):
    model, text_encoder, prompts = toy_trained
    with torch.no_grad():  # the path before any cache existed: the scheduler on the bare model
        torch.manual_seed(0)
        before = build_scheduler(dict(type=sampler, num_sampling_steps=steps, cfg_scale=4.0)).sample(
            model, text_encoder, (3, 4, 8, 8), prompts, "cpu", progress=False,
            generators=[torch.Generator().manual_seed(k) for k in range(len(prompts))])
    # None, and caches whose every hook runs but never reuses (an empty window, a threshold of 0): the same bits
    for spec in (None, "pab:start=0.5,end=0.5", "teacache:0"):
        exact, state = cached_sample(model, text_encoder, prompts, sampler, steps, spec)
        assert torch.equal(exact, before), spec
        assert state is None or state.step == steps - 1  # one model call a step, counted
    for spec, bound in CACHE_ERR.items():
        z, state = cached_sample(model, text_encoder, prompts, sampler, steps, spec)
        err = rel(z, exact)
        print(f"{sampler} {spec}: rel err {err:.3f}, reused {state.reused}")
        assert state.reused and 0 < err <= bound, (spec, err, state.reused)


def test_stepcache_settings_and_bad_input(tmp_path):
    assert stepcache.settings("teacache:0.2") == dict(type="teacache", threshold=0.2)
    assert stepcache.settings("pab:spatial=3,end=0.9") == dict(stepcache.PRESETS["pab"], spatial=3, end=0.9)
    assert stepcache.settings(dict(type="pab", cross=8))["cross"] == 8 and stepcache.settings("None") is None
    assert stepcache.settings("pab-fast:cross=10") == dict(stepcache.PRESETS["pab-fast"], cross=10, type="pab")
    for bad in ("pac", "pab:spatial=0", "pab:spatial=2.5", "pab:start=0.9,end=0.1", "teacache:-1", "pab:sptial=3",
                "teacache:x", {"spatial": 2}):
        bad_input(stepcache.settings, bad)
    cfg = load_config(str(ROOT / "configs/dit/inference/1x256x256-class.py"), ["--cache=pab", f"--ckpt={tmp_path}/w.pt",
                                                                                    f"--save_dir={tmp_path}"])
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(BadInput, match="cache"):
        validate(cfg, "sample")


# ============================================================================= video.py: mp4 in and out, the seeking decoder
def test_write_read_video(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 12, 20, 3), dtype=np.uint8)
    frames[:] = frames[:, :1, :1]  # flat colours: H.264 keeps them within a few levels
    path = vio.write_video(str(tmp_path / "a.mp4"), frames, fps=8)
    back = vio.read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).max() <= 6
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, T, H, W) in [-1, 1]
    back2 = vio.read_video(vio.write_video(str(tmp_path / "b.mp4"), video, fps=8))
    assert np.abs(back2.astype(int) - frames).max() <= 6
    assert vio.read_video(vio.write_video(str(tmp_path / "odd.mp4"), frames[:, :11, :19], 8)).shape == (5, 12, 20, 3)
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4", "odd.mp4"]  # no temporary left behind


def test_tiny_video_keeps_its_colour(tmp_path):
    """A 2x2 blue square in an 8x8 frame (the demo's samples): half-resolution chroma (yuv420p) would average its
    colour with the black around it; tiny videos are written with full-resolution chroma."""
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    frames[:, 3:5, 3:5, 2] = 255
    back = vio.read_video(vio.write_video(str(tmp_path / "tiny.mp4"), frames))
    assert back[:, 3:5, 3:5, 2].min() >= 200 and back[:, 3:5, 3:5, :2].max() <= 40
    assert toy.judge_clip(back, "a blue square moving up")["colour"] == "blue"


def write_timed(path, frames, pts):
    """An H.264 mp4 whose frame k is shown at pts[k] / 90000 s (variable frame rates)."""
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.codec_context.time_base = frames.shape[2], frames.shape[1], "yuv420p", \
            Fraction(1, 90000)
        for f, p in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, 90000)
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return path


SEEK_CASES = {  # file: codec, encoder options, frame rate, whether it seeks (keyframes every 24 or 30 frames)
    "h264.mp4": ("libx264", {"crf": "20", "g": "24"}, 30, True),  # x264's B-frames: decode order != display order
    "h264_29.97.mov": ("libx264", {"crf": "20", "g": "30"}, Fraction(30000, 1001), True),
    "h264.mkv": ("libx264", {"crf": "20", "g": "24"}, 30, True),  # no frame count (packets read), ms timestamps
    "hevc.mp4": ("libx265", {"crf": "24", "x265-params": "keyint=24:log-level=none"}, 30, True),
    "vp9.webm": ("libvpx-vp9", {"g": "24"}, 30, True),
    "mpeg4.avi": ("mpeg4", {"g": "24", "bf": "2"}, 25, False),  # AVI's B-frame packets carry no pts: from the start
}


TIMED = {"vfr.mp4": [3000 * k + 1500 * (k // 3) for k in range(100)],  # every 3rd frame lasts 1.5x: not seekable
         "offgrid.mp4": [3000 * k + 1500 * (k == 75) for k in range(100)]}  # 30 fps, but frame 75 half a frame late


@pytest.mark.parametrize("name", [*SEEK_CASES, *TIMED])
def test_seeking_decode_equals_decoding_from_the_start(tmp_path, name):
    frames, path = pan_frames(100), str(tmp_path / name)
    if name in TIMED:
        write_timed(path, frames, TIMED[name])
    else:
        codec, options, fps, _ = SEEK_CASES[name]
        vio.write_video(path, frames, fps, codec=codec, options=options)
    total, start, step = vio.frame_timing(path)
    seeks = name in SEEK_CASES and SEEK_CASES[name][3]
    assert total == 100 and (step is not None) == (name in SEEK_CASES)  # TIMED: FFmpeg's r_frame_rate sees the odd
    for first in (0, 23, 24, 25, 50):  # windows of 16 frames every 3rd, around the keyframes (every 24 or 30)
        picks = np.linspace(first, first + 47, 16, dtype=int).tolist()
        plain = vio.frames_from_start(path, picks)
        for k in picks:  # frame k is frame k of the source (the nearest of all 150)
            assert np.abs(plain[k].astype(int) - frames.astype(int)).mean((1, 2, 3)).argmin() == k
        got = vio.frames_seeking(path, picks, start, step) if step is not None else None
        assert (got is not None) == seeks, first
        assert got is None or all(np.array_equal(got[k], plain[k]) for k in picks)
        if seeks and first == 25:  # timestamps off the assumed grid, or frames missing from it, are never trusted
            assert vio.frames_seeking(path, picks, start, 2 * step) is None
            assert vio.frames_seeking(path, picks, start, step / 2) is None
            assert vio.frames_seeking(path, picks, start + step, step) is None
    for i in range(2):  # decode itself: random windows, seeking or not
        assert np.array_equal(vio.decode(path, 16, 3, data.draws(0, 0, i)),
                              vio.decode(path, 16, 3, data.draws(0, 0, i), seek=False))


# ============================================================================= data.py: the CSV dataset (clips, sizes, bad rows)
def gray_clip(path, num, step=8, size=(16, 16)):
    """Frame k is uniformly k*step: the decoded brightness names the frame (8 levels survive H.264)."""
    frames = np.stack([np.full((*size, 3), k * step, np.uint8) for k in range(num)])
    return vio.write_video(str(path), frames, fps=8)


def brightness(video):
    """(3, T, H, W) in [-1, 1] -> the frame numbers of gray_clip."""
    return ((video.mean((0, 2, 3)) + 1) * 127.5 / 8).round().long().tolist()


def test_frame_interval_and_window(tmp_path):
    total, n, k = 32, 4, 3
    csv_path = write_csv(tmp_path / "t.csv", [[gray_clip(tmp_path / "g.mp4", total), "gray"]])
    ds = data.VideoDataset(csv_path, num_frames=n, frame_interval=k, image_size=(16, 16), flip=False)
    offsets = np.linspace(0, n * k - 1, n, dtype=int).tolist()  # v1.0: linspace over the window, [0, 3, 7, 11]
    starts = set()
    for index in range(12):
        frames = brightness(ds[index]["video"])
        assert [f - frames[0] for f in frames] == offsets, frames
        assert 0 <= frames[0] <= total - n * k - 1  # v1.0's window start: randint(0, total - window - 1)
        starts.add(frames[0])
    assert len(starts) > 3  # random windows
    # the window's start is randint(0, total - window - 1) (v1.0's -1: here 0 or 1, never 2)
    csv14 = write_csv(tmp_path / "t14.csv", [[gray_clip(tmp_path / "g14.mp4", 14), "gray"]])
    ds14 = data.VideoDataset(csv14, num_frames=n, frame_interval=k, image_size=(16, 16), flip=False)
    assert {brightness(ds14[i]["video"])[0] for i in range(40)} == {0, 1}
    # a clip shorter than the window: v1.0 spreads num_frames over all of it
    csv8 = write_csv(tmp_path / "t8.csv", [[gray_clip(tmp_path / "g8.mp4", 8), "gray"]])
    ds8 = data.VideoDataset(csv8, num_frames=n, frame_interval=k, image_size=(16, 16), flip=False)
    assert brightness(ds8[0]["video"]) == [0, 2, 4, 7]
    ds1 = data.VideoDataset(csv_path, num_frames=8, frame_interval=1, image_size=(16, 16), flip=False)
    frames = brightness(ds1[0]["video"])
    assert frames == list(range(frames[0], frames[0] + 8))  # frame_interval=1: consecutive frames exactly
    # reproducible: the same (seed, epoch, index) gives the same clip; another epoch draws anew
    a = [brightness(ds[i]["video"])[0] for i in range(12)]
    assert a == [brightness(ds[i]["video"])[0] for i in range(12)]
    ds.set_epoch(1)
    assert a != [brightness(ds[i]["video"])[0] for i in range(12)]


def test_resize_crop_range_flip(tmp_path):
    frames = np.zeros((6, 24, 48, 3), np.uint8)  # (T, H, W): red | blue | green, the blue middle half is kept
    frames[:, :, :12, 0] = 255
    frames[:, :, 12:36, 2] = 255
    frames[:, :, 36:, 1] = 255
    path = vio.write_video(str(tmp_path / "wide.mp4"), frames, 8)
    csv_path = write_csv(tmp_path / "w.csv", [[path, "wide"]])
    video = data.VideoDataset(csv_path, num_frames=4, frame_interval=1, image_size=(16, 16), flip=False)[0]["video"]
    assert video.shape == (3, 4, 16, 16) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    inner = video[:, :, :, 2:14]  # away from the colour edges
    assert (inner[2] > 0.9).all() and (inner[0] < -0.9).all() and (inner[1] < -0.9).all()  # blue only
    tall = data.VideoDataset(csv_path, num_frames=4, frame_interval=1, image_size=(24, 8), flip=False)[0]["video"]
    assert tall.shape == (3, 4, 24, 8)  # a target taller than the source still fills it
    # flip: about half the samples mirrored, left-right
    lr = np.zeros((6, 16, 16, 3), np.uint8)
    lr[:, :, :8, 0] = 255
    csv_lr = write_csv(tmp_path / "lr.csv", [[vio.write_video(str(tmp_path / "lr.mp4"), lr, 8), "lr"]])
    ds = data.VideoDataset(csv_lr, num_frames=2, frame_interval=1, image_size=(16, 16), flip=True)
    flipped = [bool(ds[i]["video"][0, 0, :, 12].mean() > 0) for i in range(20)]
    assert 3 < sum(flipped) < 17


def test_images_header_root(tmp_path, monkeypatch):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    write_png(tmp_path / "img.png", rgb)
    gray_clip(tmp_path / "v.mp4", 8)
    csv_path = write_csv(tmp_path / "h.csv", [["path", "text"], ["img.png", "green"], ["v.mp4", "video"]])
    ds = data.VideoDataset(csv_path, num_frames=1, frame_interval=1, image_size=(16, 16), root=str(tmp_path))
    assert len(ds) == 2 and ds.num_skipped == 0
    s = ds[0]
    assert s["text"] == "green" and s["video"].shape == (3, 1, 16, 16)
    assert torch.allclose(s["video"][:, 0, 5, 5], torch.tensor([-1, 200 / 127.5 - 1, -1]), atol=0.02)
    ds3 = data.VideoDataset(csv_path, num_frames=3, frame_interval=1, image_size=(16, 16), root=str(tmp_path))
    v = ds3[0]["video"]
    assert v.shape == (3, 3, 16, 16) and torch.equal(v[:, 0], v[:, 2])  # v1.0 repeats an image num_frames times
    assert ds3[1]["text"] == "video"
    monkeypatch.chdir(tmp_path.parent)  # relative paths without root: from the CSV's folder, not the current one
    assert data.read_csv(csv_path) == [(str(tmp_path / "img.png"), "green"), (str(tmp_path / "v.mp4"), "video")]
    assert data.read_csv(csv_path, root="r")[0][0] == os.path.join("r", "img.png")


def test_bad_rows_skipped_and_counted(tmp_path, capfd):
    good = [gray_clip(tmp_path / f"good{i}.mp4", 8) for i in range(3)]
    cut = gray_clip(tmp_path / "cut.mp4", 8)
    blob = open(cut, "rb").read()
    open(cut, "wb").write(blob[:len(blob) // 2])
    short = gray_clip(tmp_path / "short.mp4", 2)
    missing = str(tmp_path / "missing.mp4")
    rows = [[good[0], "g0"], [missing, "m"], [cut, "c"], [good[1], "g1"], [short, "s"], [good[2], "g2"]]
    ds = data.VideoDataset(write_csv(tmp_path / "b.csv", rows), num_frames=4, frame_interval=1, image_size=(16, 16))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)  # the count lives in shared memory
    texts = [t for batch in loader for t in batch["text"]]
    assert len(texts) == len(rows) and set(texts) == {"g0", "g1", "g2"}  # a bad row yields the next good one
    assert ds.num_skipped == 3
    err = capfd.readouterr().err
    for path in (missing, cut, short):
        assert sum(path in line for line in err.splitlines()) == 1, err  # one warning per bad file
    assert "missing file" in err and "unreadable" in err and "too short" in err
    assert [t for i in range(len(ds)) for t in [ds[i]["text"]]] == ["g0", "g1", "g1", "g1", "g2", "g2"]
    assert ds.num_skipped == 3  # known bad files are not counted twice


def test_bad_csv_fails_at_construction(tmp_path):
    cut = gray_clip(tmp_path / "cut.mp4", 8)
    blob = open(cut, "rb").read()
    open(cut, "wb").write(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match="none of its 2 rows.*missing.mp4"):
        data.VideoDataset(write_csv(tmp_path / "a.csv", [[str(tmp_path / "missing.mp4"), "m"], [cut, "c"]]))
    good = gray_clip(tmp_path / "g.mp4", 8)
    with pytest.raises(ValueError, match=r"n\.csv, line 2: .*no caption"):
        data.VideoDataset(write_csv(tmp_path / "n.csv", [[good, "ok"], [good]]))
    with pytest.raises(ValueError, match="line 1: .*no caption"):
        data.VideoDataset(write_csv(tmp_path / "e.csv", [[good, " "]]))
    with pytest.raises(ValueError, match="no rows"):
        data.VideoDataset(write_csv(tmp_path / "h.csv", [["path", "caption"]]))


def test_reliability_csv_is_read_strictly(tmp_path):
    """No row silently merged, lost or made up: an unterminated quote, a mistyped header and bytes that are not UTF-8
    are errors naming the file and line; a BOM, CRLF line ends and quoted commas read right."""
    def rows(name, content):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)
    quote = rows("quote.csv", 'a.mp4,one\nb.mp4,"two\nc.mp4,three\nd.mp4,four\n')  # csv.reader: 2 rows, no warning
    assert re.search(r"quote\.csv, line 2: unexpected end of data .*close the quote", bad_input(data.read_csv, quote))
    typo = rows("typo.csv", "path,captoin\na.mp4,one\n")  # was read as a row: video 'path', caption 'captoin'
    assert "typo.csv, line 1: header 'path,captoin'" in bad_input(data.read_csv, typo)
    latin1 = rows("latin1.csv", b"a.mp4,one\nb.mp4,caf\xe9\n")
    assert "latin1.csv, line 2: not UTF-8 (byte 0xe9)" in bad_input(data.read_csv, latin1)
    assert f"{tmp_path}: cannot read the CSV" in bad_input(data.read_csv, str(tmp_path))  # a folder
    bom = rows("bom.csv", '\ufeffpath,caption\r\na.mp4,one\r\nb.mp4,"two, and ""three"""\r\n')  # Excel's UTF-8
    assert data.read_csv(bom) == [(str(tmp_path / "a.mp4"), "one"), (str(tmp_path / "b.mp4"), 'two, and "three"')]


# ============================================================================= cache.py: the latent cache
T5 = dict(type="t5", from_pretrained=None, model_max_length=16,
          config=dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))


DATA_TINY_VAE = dict(type="VideoAutoencoderKL", from_pretrained=None,
                config=dict(block_out_channels=(32, 32), norm_num_groups=8, layers_per_block=1))


def cache_cfg(tmp_path, rows=7, **kw):
    csv_path = toy.make_shapes(str(tmp_path / "s"), rows, num_frames=8, size=16)
    return dict(DEFAULTS, data_path=csv_path, num_frames=4, frame_interval=2, image_size=(16, 16), num_workers=0,
                cache_dir=str(tmp_path / "cache"), batch_size=2, vae=DATA_TINY_VAE,
                text_encoder=T5 | dict(model_max_length=32)) | kw  # the toy captions' 23-29 bytes, then padding


def bf16(x):
    return x.bfloat16().float()


@pytest.mark.parametrize("vae_cfg, windows, posterior", [(dict(type="identity"), 1, False), (DATA_TINY_VAE, 2, True)],
                         ids=["identity", "tiny_kl_2windows_posterior"])
def test_cache_matches_online_and_resumes(tmp_path, monkeypatch, vae_cfg, windows, posterior):
    from text import build_text_encoder
    from vae import build_vae

    monkeypatch.setattr(cache, "SHARD", 2)
    cfg = cache_cfg(tmp_path, rows=5, vae=vae_cfg, cache_windows=windows, cache_posterior=posterior)
    assert not cache.cache_complete(cfg)
    assert cache.build_cache(cfg) == [0, 1, 2] and cache.cache_complete(cfg)
    cached = cache.CachedDataset(cfg)
    assert len(cached) == 5 and cache.read_meta(cfg)["caption_channels"] == 32 and cached.num_skipped == 0
    online = data.video_dataset(cfg)  # flipped at random, as online training
    vae, te = build_vae(vae_cfg), build_text_encoder(cfg["text_encoder"])
    for epoch in range(3):  # epoch e of the cache holds online epoch e % windows' clips
        cached.set_epoch(epoch)
        online.set_epoch(epoch % windows)
        for i in range(5):
            c, o = cached[i], online[i]
            mean, std = vae.posterior(o["video"][None])  # (1, C, T, h, w) each
            text = te.encode([o["text"]])
            n = int(text["mask"].sum())
            assert c["text"] == o["text"] and c["latent"].shape == mean[0].shape and c["y"].dtype == torch.bfloat16
            expected = bf16(mean[0])
            if posterior:  # a new latent each epoch: mean + std * noise, the noise drawn from (seed, epoch, index)
                expected = expected + bf16(std[0]) * torch.randn(mean[0].shape, generator=data.draws(42, epoch, i))
            torch.testing.assert_close(c["latent"], expected, atol=1e-5, rtol=2 ** -7)  # 1 bf16 step (batching)
            torch.testing.assert_close(c["y"][0, :n].float(), bf16(text["y"][0, 0, :n]), atol=1e-6, rtol=2 ** -7)
            assert not c["y"][0, n:].any() and torch.equal(c["mask"], text["mask"][0])  # padding not stored
    # resume: only the missing shard is written again, and the same
    shards = sorted(os.listdir(cfg["cache_dir"]))
    assert shards == ["meta.json"] + [f"shard{k:05d}.safetensors" for k in range(3)]
    stamps = {s: os.stat(os.path.join(cfg["cache_dir"], s)).st_mtime_ns for s in shards}
    before = cached[3]["latent"]
    os.remove(os.path.join(cfg["cache_dir"], "shard00001.safetensors"))
    assert not cache.cache_complete(cfg)
    assert cache.build_cache(cfg) == [1]
    for s in shards:
        same = os.stat(os.path.join(cfg["cache_dir"], s)).st_mtime_ns == stamps[s]
        assert same == (s != "shard00001.safetensors"), s
    again = cache.CachedDataset(cfg)
    again.set_epoch(2)
    assert torch.equal(again[3]["latent"], before)
    # a cache built with other settings is refused, naming the setting
    with pytest.raises(ValueError, match="image_size"):
        cache.cache_complete(dict(cfg, image_size=(8, 8)))
    with pytest.raises(ValueError, match="cache_windows"):
        cache.cache_complete(dict(cfg, cache_windows=windows + 1))


@pytest.mark.parametrize("kind", ["clip", "classes"])
def test_cache_pooled_captions_and_class_ids(tmp_path, kind):
    """DiT/Latte's conditions cache too: one pooled CLIP vector (bf16) or the class id a row, no mask."""
    from text import build_text_encoder
    cfg = cache_cfg(tmp_path, rows=3, vae=dict(type="identity"))
    encoder = dict(clip=dict(type="clip", from_pretrained=None, model_max_length=32, config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)),
        classes=dict(type="classes", num_classes=5))[kind]
    if kind == "classes":  # captions that are class ids
        rows = list(csv.reader(open(cfg["data_path"])))
        ids = os.path.join(os.path.dirname(cfg["data_path"]), "ids.csv")  # beside it: its rows' paths are relative
        write_csv(ids, [[r[0], str(i)] for i, r in enumerate(rows)])
        cfg["data_path"] = ids
    cfg["text_encoder"] = encoder
    cache.build_cache(cfg)
    cached, te = cache.CachedDataset(cfg), build_text_encoder(encoder)
    for i in range(3):
        item, want = cached[i], te.encode([cached[i]["text"]])["y"][0]
        assert "mask" not in item
        if kind == "clip":
            assert item["y"].shape == (1, 1, 16) and torch.equal(item["y"], want.bfloat16())
        else:
            assert item["y"].dtype == torch.int64 and item["y"].item() == want.item() == i


def test_cache_bytes_and_compact_training_equals_fp32_cache(tmp_path):
    """The compact cache (bf16, kept caption tokens only) trains exactly as today's fp32 cache (fp32 latent means, all
    L tokens with the T5 outputs at the padding) does once its values are rounded to bf16; the rounding itself moves
    the loss by bf16's precision only. cache_bytes counts every byte of the shard's tensors."""
    from safetensors import safe_open
    from torch.utils.data import default_collate

    from text import build_text_encoder
    from vae import build_vae

    cfg = cache_cfg(tmp_path, rows=4)
    cache.build_cache(cfg)
    with safe_open(cache.shard_path(cfg["cache_dir"], 0), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        assert tensors["latents"].dtype == tensors["y"].dtype == torch.bfloat16 and "std" not in tensors
        latent_shape, lengths = tensors["latents"].shape[2:], tensors["lengths"].tolist()
        assert sum(t.numel() * t.element_size() for t in tensors.values()) == sum(
            cache.cache_bytes(latent_shape, n, 32) for n in lengths)
    assert max(lengths) < 32  # padding was dropped
    compact = default_collate([cache.CachedDataset(cfg)[i] for i in range(4)])
    online, vae, te = data.video_dataset(cfg), build_vae(DATA_TINY_VAE), build_text_encoder(cfg["text_encoder"])
    samples = [online[i] for i in range(4)]
    fp32 = dict(latent=vae.encode(torch.stack([s["video"] for s in samples]), sample=False),
                **te.encode([s["text"] for s in samples]))  # y (B, 1, L, C') with the padding's outputs, mask (B, L)
    model = randomized(STDiT(**TINY_ST | dict(caption_channels=32, model_max_length=32)))  # latents: TINY_ST's
    scheduler, g = build_scheduler(dict(type="iddpm", timestep_respacing="")), torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 1000, (4,), generator=g), torch.randn(compact["latent"].shape, generator=g)

    def step(latent, y, mask):
        model.zero_grad()
        loss = scheduler.training_losses(model, latent, t, dict(y=y.float(), mask=mask), noise)["loss"].mean()
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss_c, grad_c = step(compact["latent"], compact["y"], compact["mask"])
    loss_r, grad_r = step(bf16(fp32["latent"]), bf16(fp32["y"]), fp32["mask"])
    loss_32, _ = step(fp32["latent"], fp32["y"], fp32["mask"])
    assert abs(loss_c - loss_r) <= 1e-5 * abs(loss_r) and rel_err(grad_c, grad_r) < 1e-4, (loss_c, loss_r)
    assert 0 < abs(loss_32 - loss_r) < 1e-2 * abs(loss_32)  # what bf16 storage changes: within its rounding


def _cache_rank(ctx, cfg):
    cache.SHARD = 2
    return cache.build_cache(cfg, rank=ctx.rank, world_size=ctx.world_size)


def test_cache_every_rank_encodes_its_shards(tmp_path):
    """Under torchrun each rank encodes shards rank, rank + world, ...; the cache equals a one-process build."""
    from safetensors import safe_open

    cfg = cache_cfg(tmp_path, rows=5, vae=dict(type="identity"))
    assert spawn(_cache_rank, 2, tmp_path, cfg) == [[0, 2], [1]]
    assert _cache_rank(types.SimpleNamespace(rank=0, world_size=1), dict(cfg, cache_dir=str(tmp_path / "one"))) \
        == [0, 1, 2]
    for k in range(3):
        with safe_open(cache.shard_path(cfg["cache_dir"], k), "pt") as a, \
                safe_open(cache.shard_path(str(tmp_path / "one"), k), "pt") as b:
            assert a.keys() == b.keys() and all(torch.equal(a.get_tensor(n), b.get_tensor(n)) for n in a.keys())


def test_reliab_4_a_bad_shard_is_rebuilt_or_named_and_a_cut_meta_is_one_line(tmp_path, monkeypatch):
    """A shard cut short or emptied (a full disk, a stopped copy) does not count as written: CachedDataset names it
    and how to rebuild, and the next build_cache (train.py, prepare.py cache) writes those again, equal to the first;
    a meta.json cut short is one line saying what to do."""
    monkeypatch.setattr(cache, "SHARD", 2)
    cfg = cache_cfg(tmp_path, rows=5, vae=dict(type="identity"))
    assert cache.build_cache(cfg) == [0, 1, 2]
    first = [cache.CachedDataset(cfg)[i]["latent"] for i in range(5)]
    shard = lambda k: os.path.join(cfg["cache_dir"], f"shard{k:05d}.safetensors")  # noqa: E731
    blob = open(shard(1), "rb").read()
    open(shard(1), "wb").write(blob[:-100])
    open(shard(2), "wb").close()
    assert not cache.cache_complete(cfg)
    with pytest.raises(BadInput, match=rf"^{re.escape(shard(1))}: missing, cut short or corrupt \(2 such\): rebuild "
                       "with python prepare.py cache CONFIG$"):
        cache.CachedDataset(cfg)
    assert cache.build_cache(cfg) == [1, 2] and cache.cache_complete(cfg)
    again = cache.CachedDataset(cfg)
    assert all(torch.equal(again[i]["latent"], first[i]) for i in range(5))
    meta = os.path.join(cfg["cache_dir"], "meta.json")
    text = open(meta).read()
    open(meta, "w").write(text[:len(text) // 2])
    with pytest.raises(BadInput, match=rf"^{re.escape(meta)}: cut short or not a cache's meta.json \(JSONDecodeError"):
        cache.cache_complete(cfg)


# ============================================================================= parallel.py: sharded sampler, ZeroAdamW, ZeRO-2 and sequence parallelism on gloo
OPT = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)


CLIP = 0.3  # below the tiny model's gradient norm (printed), so clipping is exercised


def tiny_stdit(seed=0):
    """Tiny STDiT, every parameter ~ N(0, 0.05^2) (the zero-initialised layers get gradients too)."""
    torch.manual_seed(seed)
    model = STDiT(**TINY_ST)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def tiny_batch(step, B=4, T=4):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(B, 4, T, 8, 8, generator=g)
    y = torch.randn(B, 1, 8, 16, generator=g)
    mask = torch.arange(8)[None] < torch.tensor([8, 5, 3, 6])[:B, None]
    return x, torch.rand(B, generator=g) * 1000, y, mask, torch.randn(B, 8, T, 8, 8, generator=g)


def loss_fn(model, batch, rows=slice(None)):
    x, t, y, mask, target = (b[rows] for b in batch)
    return (model(x, t, y, mask) - target).square().mean()


def reference_run(steps, model=None):
    """One process, torch.optim.AdamW on the whole batch with clip_grad_norm_: weights after each step, norms."""
    model = model or tiny_stdit()
    opt = torch.optim.AdamW(model.parameters(), **OPT)
    norms = []
    for step in range(steps):
        opt.zero_grad()
        loss_fn(model, tiny_batch(step)).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        opt.step()
    return model, norms


def zero_steps(model, opt, ctx, steps, first=0, B=4):
    """ZeroAdamW steps; this dp rank takes its B/dp_size rows of the batch."""
    b = B // ctx.dp_size
    norms = []
    for step in range(first, first + steps):
        opt.zero_grad()
        loss_fn(model, tiny_batch(step), slice(ctx.dp_rank * b, (ctx.dp_rank + 1) * b)).backward()
        norms.append(opt.step(CLIP))
    return norms


def max_weight_err(model, ref):
    return max(rel_err(p, q) for p, q in zip(model.parameters(), ref.parameters()))


def max_update_err(model, ref, init):
    """Error relative to the change the steps made: weights alone would hide a wrong update."""
    return max(rel_err(p - p0, q - p0) for p, q, p0 in zip(model.parameters(), ref.parameters(), init.parameters()))


def test_sharded_sampler():
    samplers = [parallel.ShardedSampler(10, r, 3, seed=1) for r in range(3)]
    lists = [list(s) for s in samplers]
    assert all(len(l) == 3 == len(s) for l, s in zip(lists, samplers))  # 10 // 3, the tail dropped
    assert len(set(sum(lists, []))) == 9 and set(sum(lists, [])) <= set(range(10))  # disjoint
    assert list(parallel.ShardedSampler(10, 1, 3, seed=1)) == lists[1]  # same dp rank (an SP peer): same samples
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != lists  # a new permutation each epoch
    full = list(samplers[2])
    samplers[2].set_epoch(1, start=2)
    assert list(samplers[2]) == full[2:] and len(samplers[2]) == 1  # resume mid-epoch exactly
    assert list(parallel.ShardedSampler(5, 0, 1, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="start 4"):
        samplers[0].set_epoch(0, start=4)


def test_setup_single_process_and_bad_world(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = parallel.setup(1)
    assert (ctx.world_size, ctx.dp_size, ctx.sp_size, ctx.is_main, ctx.dp_group) == (1, 1, 1, True, None)
    with pytest.raises(BadInput, match="sp_size=2 needs several processes"):
        parallel.setup(2)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(BadInput, match="sp_size=2: the 3 processes of torchrun must divide by it"):
        parallel.setup(2)


def test_zero_adamw_single_process_is_adamw():
    ref, ref_norms = reference_run(3)
    model = tiny_stdit()
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    norms = zero_steps(model, opt, parallel.setup(1), 3)
    err = max_weight_err(model, ref)
    print(f"ZeroAdamW (1 process) vs torch AdamW: weights {err:.2e}, norms {norms} vs {ref_norms}")
    assert err < 1e-6 and norms == pytest.approx(ref_norms, rel=1e-5) and norms[0] > CLIP


def test_zero_adamw_ema_follows_the_fp32_master_weights():
    """bf16 weights, lr 1e-6: most updates are below bf16's resolution, so the model's weights hardly move, but the
    fp32 master weights and their EMA do. The EMA must average the master weights, not their bf16 copies."""
    model = tiny_stdit().bfloat16()
    model.dtype = torch.bfloat16  # inputs cast to it
    opt = parallel.ZeroAdamW(model.named_parameters(), **dict(OPT, lr=1e-6))
    of_master = of_bf16 = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    for step in range(3):
        opt.zero_grad()
        loss_fn(model, tiny_batch(step)).backward()
        opt.step()
        opt.update_ema(0.5)
        master = opt.full("master")
        of_master = {n: 0.5 * of_master[n] + 0.5 * master[n] for n in of_master}
        of_bf16 = {n: 0.5 * of_bf16[n] + 0.5 * p.detach().float() for n, p in model.named_parameters()}
    ema = opt.full("ema")
    err, err_bf16 = (max(rel_err(ema[n], ref[n]) for n in ema) for ref in (of_master, of_bf16))
    print(f"EMA vs EMA of the master weights {err:.1e}, vs EMA of the bf16 weights {err_bf16:.1e}")
    assert err < 1e-7 < 1e-5 < err_bf16
    assert opt.memory_bytes() == 4 * 4 * sum(p.numel() for p in model.parameters())  # master, 2 moments, EMA (fp32)


def _zero2_run(ctx, steps):
    model = tiny_stdit()
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    norms = zero_steps(model, opt, ctx, steps)
    weights = [p.detach().clone() for p in model.parameters()]
    # a non-finite gradient on ONE rank: every rank skips the update and reports the same non-finite norm
    opt.zero_grad()
    loss = loss_fn(model, tiny_batch(0), slice(2 * ctx.rank, 2 * ctx.rank + 2))
    (loss * (float("nan") if ctx.rank == 1 else 1.0)).backward()  # (gradients are reduced during backward)
    bad = opt.step(CLIP)
    unchanged = all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    return dict(weights=weights, norms=norms, bad=bad, unchanged=unchanged, memory=opt.memory_bytes(),
                step_count=opt.step_count)


def test_zero2_two_ranks_matches_adamw(tmp_path):
    init = tiny_stdit()
    ref, ref_norms = reference_run(3)
    results = spawn(_zero2_run, 2, tmp_path, 3)
    single = parallel.ZeroAdamW(tiny_stdit().named_parameters(), **OPT).memory_bytes()
    for r, res in enumerate(results):
        model = tiny_stdit()
        with torch.no_grad():
            for p, w in zip(model.parameters(), res["weights"]):
                p.copy_(w)
        w_err, u_err = max_weight_err(model, ref), max_update_err(model, ref, init)
        print(f"ZeRO-2 rank {r}/2 vs AdamW, 3 steps: weights {w_err:.2e}, updates {u_err:.2e}; norms {res['norms']} "
              f"vs {ref_norms}; optimizer memory {res['memory']} B vs {single} B in one process")
        assert w_err < 1e-5 and u_err < 1e-4
        assert res["norms"] == pytest.approx(ref_norms, rel=1e-5)
        assert not torch.isfinite(torch.tensor(res["bad"])) and res["unchanged"] and res["step_count"] == 3
        assert res["memory"] <= single // 2 + 3 * 4 * 2 * 8  # halves (a few bytes of padding per bucket)


def _resume_run(ctx, state_path, save_path):
    """Continue 2 steps from a 1-process checkpoint, and (separately) save one after 2 steps of our own."""
    ckpt = torch.load(state_path, weights_only=True)
    model = tiny_stdit()
    model.load_state_dict(ckpt["model"])
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    opt.load_state_dict(ckpt["optimizer"])
    zero_steps(model, opt, ctx, 2, first=2)
    resumed = [p.detach().clone() for p in model.parameters()]
    model = tiny_stdit()
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    zero_steps(model, opt, ctx, 2)
    state = dict(model=model.state_dict(), optimizer=opt.state_dict())
    if ctx.is_main:
        torch.save(state, save_path)
    return resumed


def test_checkpoint_moves_between_rank_counts(tmp_path):
    ref, _ = reference_run(4)
    ctx1 = parallel.setup(1)
    model = tiny_stdit()
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    zero_steps(model, opt, ctx1, 2)
    torch.save(dict(model=model.state_dict(), optimizer=opt.state_dict()), tmp_path / "one.pt")
    resumed = spawn(_resume_run, 2, tmp_path, str(tmp_path / "one.pt"), str(tmp_path / "two.pt"))
    ckpt = torch.load(tmp_path / "two.pt", weights_only=True)  # saved by 2 ranks, continued by 1
    model = tiny_stdit()
    model.load_state_dict(ckpt["model"])
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    opt.load_state_dict(ckpt["optimizer"])
    assert opt.step_count == 2 and set(ckpt["optimizer"]["master"]) == {n for n, _ in model.named_parameters()}
    zero_steps(model, opt, ctx1, 2, first=2)
    err_2to1 = max_weight_err(model, ref)
    errs_1to2 = []
    for weights in resumed:
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
        errs_1to2.append(max_weight_err(model, ref))
    print(f"resume vs uninterrupted (4 steps): saved by 2 ranks -> 1: {err_2to1:.2e}; 1 -> 2 ranks: {errs_1to2}")
    assert err_2to1 < 1e-5 and max(errs_1to2) < 1e-5
    bad = dict(ckpt["optimizer"], master={k: v for k, v in ckpt["optimizer"]["master"].items() if "t_block" not in k})
    with pytest.raises(ValueError, match="missing.*t_block"):
        opt.load_state_dict(bad)


def _sp_primitives(ctx):
    g, r = ctx.sp_group, ctx.sp_rank
    out = {}
    # split/gather gradient scaling on a toy "model": duplicated -> split -> per-rank -> gather -> duplicated
    torch.manual_seed(0)  # same on every rank
    x, w1, w2, w3 = torch.randn(3, 8, 5), torch.randn(5, 5), torch.randn(5, 5), torch.randn(5)
    ws = [w.requires_grad_() for w in (w1, w2, w3)]
    h = parallel.split_sequence(torch.tanh(x @ w1), 1, g)  # (3, 8/n, 5)
    h = parallel.gather_sequence(torch.tanh(h @ w2), 1, g)  # (3, 8, 5)
    (h * w3).square().sum().backward()
    out["toy_grads"] = [_sp_mean(w.grad, g) for w in ws]  # what ZeroAdamW's world mean applies
    # all_to_all: round trip and autograd (backward of a2a = a2a the other way)
    a = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(r)).requires_grad_()
    b = parallel.all_to_all(a, g, 2, 1)  # (2, 4n, 6/n)
    out["a2a_roundtrip"] = torch.equal(parallel.all_to_all(b, g, 1, 2), a.detach())
    (b * torch.arange(b.numel()).view_as(b)).sum().backward()
    out["a2a"] = (a.detach(), b.detach(), a.grad)
    # Ulysses vs plain attention on the full sequence: q, k, v (B, N, H, D), this rank holds N/n of them
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 4, 8, generator=gen).requires_grad_() for _ in range(3))
    local = [parallel.split_sequence(t, 1, g) for t in (q, k, v)]
    o = parallel.gather_sequence(parallel.ulysses(attention, g)(*local), 1, g)
    (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
    out["ulysses"] = (o.detach(), *[_sp_mean(t.grad, g) for t in (q, k, v)])
    for name, call in dict(heads=lambda: parallel.ulysses(attention, g)(*[t[:, :, :3] for t in local]),
                           tokens=lambda: parallel.enable_sequence_parallel(tiny_stdit(), g).split_tokens(
                               torch.zeros(1, 3, 3, 4), torch.zeros(1, 3, 4)),
                           model_tokens=lambda: parallel.enable_sequence_parallel(
                               STDiT(**dict(TINY_ST, input_size=(3, 6, 6))), g),
                           model_heads=lambda: parallel.enable_sequence_parallel(
                               STDiT(**dict(TINY_ST, num_heads=1)), g)).items():
        try:
            call()
            out[name] = "no error"
        except ValueError as e:
            out[name] = str(e)
    return out


def _sp_mean(t, group):
    t = t.detach().clone()
    torch.distributed.all_reduce(t, group=group)
    return t / torch.distributed.get_world_size(group)


def test_sequence_parallel_primitives(tmp_path):
    res = spawn(_sp_primitives, 2, tmp_path, sp_size=2)
    torch.manual_seed(0)
    x, w1, w2, w3 = torch.randn(3, 8, 5), torch.randn(5, 5), torch.randn(5, 5), torch.randn(5)
    ws = [w.requires_grad_() for w in (w1, w2, w3)]
    (torch.tanh(torch.tanh(x @ w1) @ w2) * w3).square().sum().backward()
    toy = [rel_err(got, w.grad) for got, w in zip(res[0]["toy_grads"], ws)]
    a0, b0, ga0 = res[0]["a2a"]
    a1, b1, ga1 = res[1]["a2a"]
    assert torch.equal(b0, torch.cat([a0[..., :3], a1[..., :3]], 1))  # rank 0 gets every rank's first head-half
    assert torch.equal(b1, torch.cat([a0[..., 3:], a1[..., 3:]], 1))
    w = torch.arange(b0.numel()).view_as(b0).float()  # d(sum(b * w))/da: w routed back to where each a went
    assert torch.equal(ga0, torch.cat([w[:, :4], w[:, :4]], 2)) and torch.equal(ga1, torch.cat([w[:, 4:], w[:, 4:]], 2))
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 4, 8, generator=gen).requires_grad_() for _ in range(3))
    o = attention(q, k, v)
    (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
    uly = [rel_err(got, ref) for got, ref in zip(res[0]["ulysses"], (o, q.grad, k.grad, v.grad))]
    print(f"split/gather toy grads (SP mean) vs unsplit: {toy}; Ulysses vs attention: out, dq, dk, dv {uly}")
    assert max(toy) < 1e-6 and max(uly) < 1e-6
    for r in res:
        assert r["a2a_roundtrip"]
        assert "3 attention heads are not divisible by sp_size 2" in r["heads"]
        assert "neither 3 frame tokens nor 3 spatial tokens are divisible by sp_size 2" in r["tokens"]
        assert "the 3 frame tokens or the 9 spatial tokens must divide by it" in r["model_tokens"]
        assert "the model's 1 attention heads must divide by it" in r["model_heads"]


def _sp_stdit(ctx, steps):
    model = parallel.enable_sequence_parallel(tiny_stdit(), ctx.sp_group)
    sampler = parallel.ShardedSampler(12, ctx.dp_rank, ctx.dp_size)
    out = {"layout": (ctx.dp_rank, ctx.sp_rank, ctx.dp_size, list(sampler))}
    b = 4 // ctx.dp_size
    rows = slice(ctx.dp_rank * b, (ctx.dp_rank + 1) * b)
    x, t, y, mask, target = (v[rows] for v in tiny_batch(0))
    pred = model(x, t, y, mask)
    (pred - target).square().mean().backward()
    out["pred"] = pred.detach()
    out["grads"] = [_sp_mean(p.grad, ctx.sp_group) for p in model.parameters()]
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    out["memory"] = opt.memory_bytes()
    out["norms"] = zero_steps(model, opt, ctx, steps)
    out["weights"] = [p.detach().clone() for p in model.parameters()]
    return out


def _check_sp(res, steps, tag):
    model = tiny_stdit()
    x, t, y, mask, target = tiny_batch(0)
    pred = model(x, t, y, mask)
    (pred - target).square().mean().backward()
    dp = res[0]["layout"][2]
    b = 4 // dp
    out_err = max(rel_err(r["pred"], pred[r["layout"][0] * b:(r["layout"][0] + 1) * b]) for r in res)
    # each rank holds its SP group's mean gradient for its dp rank's rows; their mean is the full batch's gradient
    grad_err = max(rel_err(sum(r["grads"][i] for r in res) / len(res), p.grad)
                   for i, p in enumerate(model.parameters()))
    ref, ref_norms = reference_run(steps)
    w_err = max(rel_err(w, q) for r in res for w, q in zip(r["weights"], ref.parameters()))
    print(f"{tag} vs one process: forward {out_err:.2e}, grads {grad_err:.2e}, weights after {steps} ZeroAdamW steps "
          f"{w_err:.2e}; norms {res[0]['norms']} vs {ref_norms}; optimizer memory per rank {res[0]['memory']} B")
    assert out_err < 1e-5 and grad_err < 1e-4 and w_err < 1e-5  # grads: q_linear's, ~1e-7 in norm, reach 6e-6
    assert res[0]["norms"] == pytest.approx(ref_norms, rel=1e-5)


def test_sequence_parallel_stdit_sp2(tmp_path):
    res = spawn(_sp_stdit, 2, tmp_path, 2, sp_size=2)
    _check_sp(res, 2, "STDiT sp 2")


def _sp_spatial(ctx):
    model = parallel.enable_sequence_parallel(tiny_stdit(), ctx.sp_group)
    x, t, y, mask, target = tiny_batch(0, T=3)
    pred = model(x, t, y, mask)
    (pred - target).square().mean().backward()
    return pred.detach(), [_sp_mean(p.grad, ctx.sp_group) for p in model.parameters()]


def test_sequence_parallel_splits_spatial_tokens_when_frames_do_not_divide(tmp_path):
    """3 frames over 2 ranks: each holds 8 of the 16 spatial tokens of every frame, Ulysses around spatial attention."""
    res = spawn(_sp_spatial, 2, tmp_path, sp_size=2)
    model = tiny_stdit()
    x, t, y, mask, target = tiny_batch(0, T=3)
    pred = model(x, t, y, mask)
    (pred - target).square().mean().backward()
    out_err = max(rel_err(r[0], pred) for r in res)
    grad_err = max(rel_err(g, p.grad) for r in res for g, p in zip(r[1], model.parameters()))
    print(f"STDiT sp 2, spatial split vs one process: forward {out_err:.2e}, grads {grad_err:.2e}")
    assert out_err < 1e-5 and grad_err < 1e-4


def test_sequence_parallel_stdit_dp2_sp2(tmp_path):
    res = spawn(_sp_stdit, 4, tmp_path, 2, sp_size=2)
    layouts = [r["layout"] for r in res]
    assert [l[:3] for l in layouts] == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    assert layouts[0][3] == layouts[1][3] and layouts[2][3] == layouts[3][3]  # SP peers: same samples
    assert not set(layouts[0][3]) & set(layouts[2][3])  # DP groups: disjoint
    _check_sp(res, 2, "STDiT dp 2 x sp 2")


# ============================================================================= toy.py: the toy set and its judge
def test_toy_shapes_and_judge(tmp_path, monkeypatch):
    csv_path = toy.make_shapes(str(tmp_path / "shapes"), 32, seed=1)
    rows = data.read_csv(csv_path)
    assert sorted(c for _, c in rows) == sorted(toy.SHAPES_PROMPTS) and len(set(toy.SHAPES_PROMPTS)) == 32
    assert all(re.fullmatch(r"a (red|green|blue|yellow) (circle|square) moving (left|right|up|down)", c)
               for _, c in rows)
    for path, caption in rows:
        frames = vio.read_video(path)
        assert frames.shape == (16, 32, 32, 3)
        r = toy.judge_clip(frames, caption)
        assert r["colour_ok"] and r["direction_ok"], (path, caption, r)
        assert not toy.judge_clip(frames[::-1], caption)["direction_ok"]  # played backwards
        assert not toy.judge_clip(frames[..., [1, 2, 0]], caption)["colour_ok"]  # red->blue, green->red, ...
        assert not toy.judge_clip(np.zeros_like(frames), caption)["colour_ok"]  # nothing there
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # the float (3, T, H, W) form
    assert toy.judge_clip(video, caption)["colour_ok"]
    acc = toy.judge_files(str(tmp_path / "shapes"))
    assert acc["both"] == acc["clean"] == 1.0
    assert open(csv_path).read().startswith("00000.mp4,")  # paths relative to the CSV: the folder can move
    monkeypatch.chdir(tmp_path.parent)
    assert data.read_csv(csv_path)[0][0] == str(tmp_path / "shapes" / "00000.mp4")
    ds = data.VideoDataset(csv_path, num_frames=4, frame_interval=5, image_size=(8, 8), flip=False)  # the demo's view
    assert all(r["colour_ok"] and r["direction_ok"] and r["clean"]
               for r in (toy.judge_clip(ds[i]["video"], ds[i]["text"]) for i in range(len(ds))))
    named = tmp_path / "named"
    vio.write_video(str(named / "a_red_circle_moving_right-seed0.mp4"), frames, 8)  # it is not a red circle
    assert toy.caption_from_name("x/a_red_circle_moving_right-seed0.mp4") == "a red circle moving right"
    expected = toy.judge_clip(frames, "a red circle moving right")
    acc = toy.judge_files(str(named))
    assert acc["n"] == 1 and acc["both"] == float(expected["colour_ok"] and expected["direction_ok"])


def test_toy_judge_is_strict():
    """Clips a lenient judge (a vote of the pixels' colours, the first and last frame's centroids, no look at the
    background) would pass: a red-and-green blob, a shape that jumps right and then goes left, speckles around it."""
    frames = toy.shape_clip("red", "square", "right", np.random.default_rng(0))  # (16, 32, 32, 3) on black
    r = toy.judge_clip(frames, "a red square moving right")
    x = r.pop("centroids")[:, 0]
    assert (np.diff(x) > 0).all() and abs(x[-1] - x[0] - 23) < 0.6  # edge to edge: 32 - 2r - 1 pixels
    assert r | dict(colour="red", direction="right") == dict(colour_ok=True, direction_ok=True, clean=True,
                                                             colour="red", direction="right")
    mixed, fg = frames.copy(), frames.max(-1) > 0
    mixed[fg] = (255, 115, 0)  # each pixel nearer red than yellow...
    mixed[:, ::3][fg[:, ::3]] = (0, 255, 0)  # ...and a third green: a vote says red, the mean is yellow
    assert toy.judge_clip(mixed, "a red square moving right")["colour"] == "yellow"
    back = frames[[0] + list(range(15, 0, -1))]  # the last frame right of the first, the motion leftwards
    assert toy.judge_clip(back, "a red square moving right")["direction"] == "left"
    speckled = frames.copy()
    speckled[np.random.default_rng(1).random(fg.shape) < 0.05] = 90  # grey dots, dimmer than the shape
    r = toy.judge_clip(speckled, "a red square moving right")
    assert r["colour_ok"] and r["direction_ok"] and not r["clean"]
    assert not toy.judge_clip(np.maximum(frames, 70), "a red square moving right")["clean"]  # a grey background
    assert toy.judge_clip(np.maximum(frames, 60), "a red square moving right")["clean"]  # dark enough


def test_toy_wrap_start_and_joins(tmp_path):
    """The torus set (toy.py shapes --wrap) and what judge_video reads from sample.py's sidecars: the start of an
    image-to-video clip against its reference, the joins of a looped one."""
    rng = np.random.default_rng(0)
    for caption in toy.SHAPES_PROMPTS[:8]:
        _, colour, shape, _, direction = caption.split()
        clip = toy.shape_clip(colour, shape, direction, rng, 20, 16, wrap=True)
        r = toy.judge_clip(clip, caption, wrap=True)
        assert r["colour_ok"] and r["direction_ok"] and r["clean"], (caption, r)
        dx, dy = toy.DIRECTIONS[direction]
        moves = toy.step(r["centroids"][:-1], r["centroids"][1:], np.array([16, 16]), wrap=True) @ (dx, dy)
        assert (moves > -0.6).all() and abs(moves.mean() - 11 / 19) < 0.05  # the crossing's speed, across the edge
        assert not toy.judge_clip(clip[::-1], caption, wrap=True)["direction_ok"]
    caption, clip = "a red square moving right", toy.shape_clip("red", "square", "right", rng, 20, 16, wrap=True)
    assert (clip[..., 0] > 0).any(-2)[:, [0, -1]].any()  # it crosses the edge in these 20 frames

    def sampled(name, frames, side):  # a video and the sidecar sample.py would write beside it, named as it names
        path = tmp_path / f"a_red_square_moving_right-{name}.mp4"
        vio.write_video(str(path), frames, 8)
        path.with_suffix(".json").write_text(json.dumps(dict(side, config=dict(
            num_frames=8, condition_frame_length=2) | side.get("config", {}))))
        return toy.judge_video(str(path), caption, wrap=True)

    for name, start in (("ref", 0), ("late", 5)):
        vio.write_video(str(tmp_path / f"{name}_image.mp4"), clip[start:start + 1], 8)
    i2v = dict(reference_path=str(tmp_path / "ref_image.mp4"), mask_strategy="0")
    assert sampled("i2v", clip[:8], i2v)["start_ok"]  # frame 1, the first generated, 0.58 pixels on
    assert not sampled("late", clip[:8], dict(i2v, reference_path=str(tmp_path / "late_image.mp4")))["start_ok"]
    loop = dict(config=dict(loop=3))  # 8 + 6 + 6 frames, joins at 8 and 14
    r = sampled("loop", clip, loop)
    assert r["joins_ok"] and len(r["joins"]) == 2
    back = clip.copy()
    back[14:] = np.roll(clip[14:], -3, axis=2)  # the third loop starts 3 pixels back
    r = sampled("back", back, loop)
    assert not r["joins_ok"] and r["joins"][1] <= -1.5
    assert "joins" not in toy.judge_clip(clip, caption, wrap=True)
    acc = toy.judge_files(str(tmp_path), wrap=True)  # (the reference images have no toy caption: not judged)
    assert acc["n"] == 4 and acc["start"] == acc["joins"] == 0.5


def test_toy_make_shapes_writes_the_named_csv(tmp_path, monkeypatch):
    # a config's data_path may name any CSV file, also one in the current folder (data_path="toy.csv")
    path = toy.make_shapes(str(tmp_path / "s"), 2, num_frames=4, size=8, csv_name="val.csv")
    assert path == str(tmp_path / "s" / "val.csv")
    assert sorted(os.listdir(tmp_path / "s")) == ["00000.mp4", "00001.mp4", "val.csv"]  # no train.csv
    assert [c for _, c in data.read_csv(path)] == toy.SHAPES_PROMPTS[:2]
    monkeypatch.chdir(tmp_path)
    assert toy.make_shapes("", 1, num_frames=4, size=8, csv_name="toy.csv") == "toy.csv"
    assert len(data.read_csv(str(tmp_path / "toy.csv"))) == 1


# ============================================================================= lora.py: adapters on a frozen base, peft's format, merging
LORA = dict(lora.DEFAULTS, r=4, alpha=8)
ONE_RANK = types.SimpleNamespace(dp_size=1, dp_rank=0)


def lora_base(tmp_path):
    """A tiny STDiT with every weight nonzero (tiny_stdit) saved as the base file -> (path, the model)."""
    base = tiny_stdit()
    torch.save(base.state_dict(), tmp_path / "base.pt")
    return str(tmp_path / "base.pt"), base


def lora_trained(ctx, base_path, steps=3):
    """The tiny STDiT on base_path with LORA's adapters after `steps` ZeroAdamW steps -> (model, base info)."""
    torch.manual_seed(0)  # the adapters' init: the same on every rank
    model = STDiT(**TINY_ST)
    info = lora.add(model, LORA, base_path)
    opt = parallel.ZeroAdamW(model.named_parameters(), **OPT)
    zero_steps(model, opt, ctx, steps)
    return model, info


def _lora_rank(ctx, base_path):
    model, _ = lora_trained(ctx, base_path)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_trains_only_adapters_base_bit_identical(tmp_path):
    path, base = lora_base(tmp_path)
    model, info = lora_trained(ONE_RANK, path)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trained) == 2 * 9 * TINY_ST["depth"] and all(".lora_" in n for n in trained)  # A, B of 9 linears
    assert info["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    frozen = {n.replace(".base_layer", ""): v for n, v in model.state_dict().items() if ".lora_" not in n}
    assert frozen.keys() == base.state_dict().keys()
    assert all(torch.equal(v, base.state_dict()[n]) for n, v in frozen.items())  # the base: bit-identical
    torch.manual_seed(0)
    lora.add(init := STDiT(**TINY_ST), LORA, path)
    start = dict(init.named_parameters())
    assert all(not torch.equal(p, start[n]) for n, p in trained.items())  # every adapter moved (B from zero)


def test_lora_export_reloads_with_peft_and_equals_merged(tmp_path):
    from peft import PeftModel
    path, base = lora_base(tmp_path)
    model, info = lora_trained(ONE_RANK, path)
    folder = lora.export({n: p for n, p in model.named_parameters() if p.requires_grad}, LORA, info, tmp_path / "a")
    assert sorted(os.listdir(folder)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert info["sha256"] in open(folder / "README.md").read()
    x, t, y, mask, _ = tiny_batch(0)
    with torch.no_grad():
        want = model.eval()(x, t, y, mask)
        peft_out = PeftModel.from_pretrained(tiny_stdit(), folder).eval()(x, t, y, mask)
        found = lora.check([dict(path=folder, scale=1.0)], base.state_dict(), path)
        merged = lora.merge(tiny_stdit(), found).eval()
        got = merged(x, t, y, mask)
        zero = lora.merge(tiny_stdit(), [dict(found[0], scale=0.0)])
    print(f"LoRA: peft's reload vs trained {rel_err(peft_out, want):.1e}, merged vs trained {rel_err(got, want):.1e}")
    assert rel_err(peft_out, want) < 1e-6 and rel_err(got, want) < 1e-6 and rel_err(want, base(x, t, y, mask)) > 1e-3
    assert merged.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in zero.state_dict().items())  # scale 0: bit for bit


def test_lora_zero2_two_ranks_equals_one_rank(tmp_path):
    path, _ = lora_base(tmp_path)
    one = _lora_rank(ONE_RANK, path)
    for r, two in enumerate(spawn(_lora_rank, 2, tmp_path, path)):
        err = max(rel_err(two[n], one[n]) for n in one)
        print(f"LoRA ZeRO-2 rank {r}/2 vs 1 rank, 3 steps: adapters {err:.1e}")
        assert two.keys() == one.keys() and err < 1e-5


# ============================================================================= config.py: loading, overrides, validation (and the builders' type checks it relies on)
def test_build_unknown_types():
    with pytest.raises(BadInput, match=r"vae.type='VideoVAE': give one of VideoAutoencoderKL.*identity"):
        V.build_vae(dict(type="VideoVAE"))
    with pytest.raises(BadInput, match=r"text_encoder.type='bert': give one of t5, clip, classes"):
        TX.build_text_encoder(dict(type="bert"))
    with pytest.raises(BadInput, match=r"scheduler.ddim_steps=10: not a keyword of scheduler type 'iddpm'"):
        build_scheduler(dict(type="iddpm", ddim_steps=10))


def test_config_loads_and_overrides(tmp_path):
    cfg = load_config(str(ROOT / "configs/opensora/train/16x256x256.py"), ["--batch_size=4", "--model.space_scale=0.25",
                                                       "--outputs=runs/a", "--image_size=(128, 128)"])
    assert cfg["batch_size"] == 4 and cfg["outputs"] == "runs/a" and cfg["image_size"] == (128, 128)
    assert cfg["model"]["space_scale"] == 0.25 and cfg["model"]["type"] == "STDiT-XL/2"
    assert cfg["lr"] == 2e-5 and cfg["num_frames"] == 16 and cfg["frame_interval"] == 3
    # the file's own dicts are not mutated by a nested override
    assert load_config(str(ROOT / "configs/opensora/train/16x256x256.py"))["model"]["space_scale"] == 0.5


def test_config_unknown_keys(tmp_path):
    with pytest.raises(BadInput, match="batch_sise"):
        load_config(str(ROOT / "configs/opensora/train/16x256x256.py"), ["--batch_sise=4"])
    with pytest.raises(BadInput, match="lr.x"):
        load_config(str(ROOT / "configs/opensora/train/16x256x256.py"), ["--lr.x=4"])
    bad = tmp_path / "bad.py"
    bad.write_text("num_frame = 16\n")
    with pytest.raises(BadInput, match="num_frame"):
        load_config(str(bad))


def test_config_unknown_nested_keys():
    v1 = "opensora/train/16x256x256"
    for config, arg, name in [(v1, "--model.depht=2", "depht"), (v1, "--scheduler.foo=1", "foo"),
                              (v1, "--vae.scale=2.0", "scale"),  # identity's keyword, not VideoAutoencoderKL's
                              ("shapes", "--text_encoder.config.d_modle=8", "d_modle")]:
        with pytest.raises(BadInput, match=f"--{re.escape(arg.split('=')[0][2:])}: '{name}'"):
            load_config(str(ROOT / f"configs/{config}.py"), [arg])
    # a keyword of the class that `type` names is known though the file's dict does not list it
    cfg = load_config(str(ROOT / "configs/opensora/train/16x256x256.py"), ["--model.depth=2", "--vae.micro_batch_size=4",
                                                       "--scheduler.num_sampling_steps=5", "--scheduler.cfg_scale=5.0"])
    assert cfg["model"]["depth"] == 2 and cfg["vae"]["micro_batch_size"] == 4
    assert cfg["scheduler"]["num_sampling_steps"] == 5


def test_config_override_types():
    path = str(ROOT / "configs/shapes.py")
    for arg, want in [("--max_steps=ten", "str .*int"), ("--batch_size=2.5", "float .*int"),
                       ("--model.hidden_size='64'", "str .*int"), ("--image_size=8", "int .*tuple")]:
        with pytest.raises(BadInput, match=f"{re.escape(arg[2:].split('=')[0])}.*{want}"):
            load_config(path, [arg])
    cfg = load_config(path, ["--lr=1", "--grad_checkpoint=2", "--eval_prompts=None", "--max_steps=7"])
    assert cfg["lr"] == 1 and cfg["grad_checkpoint"] == 2 and cfg["eval_prompts"] is None and cfg["max_steps"] == 7
    assert load_config(path, ["--load=runs/x"])["load"] == "runs/x"  # anything where the default is None


OPEN_SORA_V1_CONFIG = '''num_frames = 16
frame_interval = 3
image_size = (256, 256)
root = None
data_path = "CSV_PATH"
use_image_transform = False
num_workers = 4
dtype = "bf16"
grad_checkpoint = True
plugin = "zero2"
sp_size = 1
model = dict(type="STDiT-XL/2", space_scale=0.5, time_scale=1.0, from_pretrained="PixArt-XL-2-512x512.pth",
             enable_flashattn=True, enable_layernorm_kernel=True)
vae = dict(type="VideoAutoencoderKL", from_pretrained="stabilityai/sd-vae-ft-ema")
text_encoder = dict(type="t5", from_pretrained="./pretrained_models/t5_ckpts", model_max_length=120, shardformer=True)
scheduler = dict(type="iddpm", timestep_respacing="")
seed = 42
outputs = "outputs"
wandb = False
epochs = 1000
log_every = 10
ckpt_every = 1000
load = None
batch_size = 8
lr = 2e-5
grad_clip = 1.0
'''


def test_lora_config_key_and_overrides(tmp_path):
    shapes = str(ROOT / "configs/shapes.py")
    assert load_config(shapes)["lora"] is None  # full fine-tuning, as before
    assert load_config(shapes, ["--lora.r=8"])["lora"] == dict(lora.DEFAULTS, r=8)  # on, the rest as DEFAULTS
    (tmp_path / "c.py").write_text(f"exec(open({shapes!r}).read())\nlora = dict(r=2)\n")
    assert load_config(str(tmp_path / "c.py"), ["--lora.dropout=0.1"])["lora"] == dict(lora.DEFAULTS, r=2, dropout=0.1)
    assert load_config(str(tmp_path / "c.py"), ["--lora=None"])["lora"] is None
    for override, message in [("--lora.rank=8", "'rank' is not a key of lora"), ("--lora.r=0", "'r': 0, .*r >= 1"),
                              ("--lora.dropout=1", "'dropout': 1, .*dropout in"), ("--lora.alpha=-1", "'alpha': -1, ")]:
        with pytest.raises(BadInput, match=message):
            validate(load_config(str(tmp_path / "c.py"), [override]), "train", str(tmp_path / "run"))
    with pytest.raises(BadInput, match="model.from_pretrained=None: LoRA adapts a base"):
        validate(load_config(shapes, ["--lora.r=8", f"--data_path={tmp_path}/d/train.csv"]), "train", str(tmp_path))


def test_config_open_sora_v1_file(tmp_path):
    """A v1.0 config file (its configs/opensora/train/16x256x256.py layout) loads as is and builds a meta model."""
    path = tmp_path / "16x256x256.py"
    path.write_text(OPEN_SORA_V1_CONFIG)
    cfg = load_config(str(path))
    assert cfg["model"]["type"] == "STDiT-XL/2" and cfg["plugin"] == "zero2" and cfg["grad_clip"] == 1.0
    with torch.device("meta"):
        m = build_model(cfg["model"] | dict(from_pretrained=None), input_size=(16, 32, 32), in_channels=4,
                        caption_channels=4096, model_max_length=120)
    assert sum(p.numel() for p in m.parameters()) > 500e6


@pytest.mark.skipif(not os.environ.get("OPENSORA_V1"), reason="set OPENSORA_V1 to a checkout of Open-Sora v1.0.0")
def test_v1_config_files_load_and_build():
    """Open-Sora v1.0's own 23 config files, unchanged: each loads, builds its model (meta device, v1.0's released
    sizes) and names a text encoder whose class takes its keywords. OPENSORA_V1=path/to/Open-Sora (tag v1.0.0)."""
    import inspect
    paths = sorted(pathlib.Path(os.environ["OPENSORA_V1"], "configs").rglob("*.py"))
    assert len(paths) == 23, [str(p) for p in paths]
    for path in paths:
        cfg = load_config(str(path))
        te = dict(cfg["text_encoder"])
        cls = TX.TEXT_ENCODERS[te.pop("type")]
        inspect.signature(cls).bind(**te)
        dims = dict(t5=(4096, te.get("model_max_length")), clip=(512, te.get("model_max_length")), classes=(None, None))
        channels, length = dims[cfg["text_encoder"]["type"]]
        latent = V.latent_size((cfg["num_frames"], *cfg["image_size"]), (1, 8, 8))
        with torch.device("meta"):
            model = build_model(cfg["model"] | dict(from_pretrained=None), input_size=latent, in_channels=4,
                                caption_channels=channels, model_max_length=length)
        assert sum(p.numel() for p in model.parameters()) > 500e6, path


def test_reliability_config_file_errors(tmp_path):
    """A missing config file, a syntax error, a failing line, an unknown or mistyped key, a wrong type: one line."""
    assert "nope.py: no such config file" in bad_input(load_config, str(tmp_path / "nope.py"))
    for text, line, why in [("num_frames = 16\nimage_size = (256, 256\n", 2, "never closed"),
                            ("num_frames = 16\nfps = FPS\n", 2, "NameError: name 'FPS' is not defined"),
                            ("batch_sise = 4\n", None, "unknown config key 'batch_sise' (did you mean 'batch_size'?)")]:
        (tmp_path / "c.py").write_text(text)
        message = bad_input(load_config, str(tmp_path / "c.py"))
        assert why in message and (line is None or f"c.py, line {line}:" in message), message
    shapes = str(ROOT / "configs/shapes.py")
    assert "(did you mean 'max_steps'?)" in bad_input(load_config, shapes, ["--max_step=10"])
    assert "str where" in bad_input(load_config, shapes, ["--batch_size=eight"])


def train_cfg(tmp_path, *overrides):
    """The demo config with its data, cache and outputs under tmp_path; validated as train.py does."""
    cfg = load_config(str(ROOT / "configs/shapes.py"), [f"--data_path={tmp_path}/data/train.csv",
                                                        f"--cache_dir={tmp_path}/data/cache", *overrides])
    return cfg, str(tmp_path / "out/shapes")


@pytest.mark.parametrize("override, message", [
    ("--batch_size=0", "batch_size=0: give a whole number >= 1"), ("--ckpt_every=0", "ckpt_every=0: give"),
    ("--log_every=0", "log_every=0: give"), ("--num_frames=0", "num_frames=0: give"),
    ("--frame_interval=0", "frame_interval=0: give"), ("--max_steps=-1", "max_steps=-1: give a number of steps >= 1"),
    ("--max_steps=0", "max_steps=0: give a number of steps >= 1, or None"), ("--keep_last=0", "keep_last=0: give"),
    ("--lr=-1.0", "lr=-1.0: give a number > 0"), ("--ema_decay=1.5", r"ema_decay=1.5: give a number in \[0, 1\]"),
    ("--dtype='fp8'", "dtype='fp8': give one of bf16"), ("--image_size=(8,)", r"image_size=\(8,\): give \(height, w"),
    ("--sp_size=2", "plugin='zero2': with sp_size=2"), ("--eval_prompts=['']", r"eval_prompts=\[''\]: give a list"),
    ("--model.type='STDiT-XXL/2'", "model.type='STDiT-XXL/2': give one of STDiT-XL/2, PixArt-XL/2"),
    ("--vae.type='VideoAutoencoderKL'", "vae.scale=4.0: not a keyword of vae type 'VideoAutoencoderKL'"),
    # found at step 1 after the whole cache was built, before: not divisible by 2x2 patches / 4-frame patches
    ("--image_size=(8, 9)", r"image_size=\(8, 9\): \(T, H, W\) must divide .*multiples of \(4, 2, 2\)"),
    ("--num_frames=6", r"num_frames=6: .*patch_size \(4, 2, 2\)"),
    ("--model.patch_size=(1, 8, 8)", r"image_size=\(12, 12\): .*multiples of \(1, 8, 8\)"),
])
def test_reliability_validate_ranges_and_shapes(tmp_path, override, message):
    cfg, run_dir = train_cfg(tmp_path, override, *["--image_size=(12, 12)"] * ("patch_size" in override))
    assert re.search(message, bad_input(validate, cfg, "train", run_dir))
    assert not os.listdir(tmp_path)  # nothing written


def test_reliability_validate_files_and_folders(tmp_path):
    """Before anything is written or loaded: data_path, the toy set's folder, the run folder, --load, save_dir."""
    cfg, run_dir = train_cfg(tmp_path)
    validate(cfg, "train", run_dir)  # the demo as it ships (the toy set is made on first use)
    mine = tmp_path / "my_videos"  # a mistyped --data_path: the toy set would land among the user's own files
    mine.mkdir()
    (mine / "cat.mp4").write_bytes(b"")
    cfg["data_path"] = str(mine / "trian.csv")
    assert "holds cat.mp4: fix data_path, or --make_shapes=0" in bad_input(validate, cfg, "train", run_dir)
    cfg["make_shapes"] = 0
    assert "trian.csv': no such file" in bad_input(validate, cfg, "train", run_dir)
    cfg["data_path"] = str(mine)
    assert "my_videos': a folder: give the CSV file" in bad_input(validate, cfg, "cache")
    assert os.listdir(mine) == ["cat.mp4"] and sorted(os.listdir(tmp_path)) == ["my_videos"]
    # the run folder: not writable (a file in the way; a read-only folder where permissions apply), an earlier run's
    cfg, run_dir = train_cfg(tmp_path)
    (tmp_path / "file").write_text("")
    assert "file/shapes': cannot write there" in bad_input(validate, cfg, "train", str(tmp_path / "file/shapes"))
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        (tmp_path / "ro").mkdir(mode=0o555)
        assert "cannot write there (Permission denied)" in bad_input(validate, cfg, "train", str(tmp_path / "ro/x"))
    save_checkpoint(dict(step=1), str(tmp_path / "out/shapes/step0000001.pt"))
    assert f"{run_dir} holds the checkpoints of an earlier run: resume it with --load=" in \
        bad_input(validate, cfg, "train", run_dir)
    cfg["load"] = str(tmp_path / "out/nothing")
    message = bad_input(validate, cfg, "train", cfg["load"])
    assert "nothing': no such file, or a folder with no stepNNNNNNN.pt" in message
    cfg["load"] = run_dir
    validate(cfg, "train", run_dir)
    sample_cfg = load_config(str(ROOT / "configs/shapes.py"), [f"--ckpt={run_dir}", f"--save_dir={tmp_path}/file/s"])
    assert "save_dir=" in bad_input(validate, sample_cfg, "sample")  # before any video is made, not after


def test_mask_ratios_validated_before_training(tmp_path):
    cfg, run_dir = train_cfg(tmp_path)
    mask_cfg = load_config(str(ROOT / "configs/shapes_mask.py"), [f"--data_path={tmp_path}/data/train.csv"])
    validate(mask_cfg, "train", run_dir)  # the toy recipe: 1-frame patches
    old = {"mask_no": 0.7, "mask_random": 0.15, "mask_head": 0.05, "mask_tail": 0.05, "mask_head_tail": 0.05}
    validate(dict(mask_cfg, mask_ratios=old), "train", run_dir)  # the names of v1.1's own 16x256x256-mask.py
    assert load_config(str(ROOT / "configs/opensora/train/16x256x256-mask.py"))["mask_ratios"]["mask_no"] == 0.5
    for bad in [dict(mask_cfg, mask_ratios={"mask_no": 0.5, "mask_foo": 0.5}), dict(mask_cfg, mask_ratios={"mask_no": 0.9}),
                dict(cfg, mask_ratios=old),  # configs/shapes.py: patches of all 4 frames
                dict(mask_cfg, model=dict(type="DiT", depth=1)),  # no x_mask
                dict(mask_cfg, num_frames=1)]:  # no frame to generate from a given one
        assert "mask_ratios=" in bad_input(validate, bad, "train", run_dir)


def test_reliability_open_sora_v1_placeholders(tmp_path):
    """v1.0's config files ship placeholders: each is one line naming the key and what to set, before any load."""
    (tmp_path / "v1.py").write_text(OPEN_SORA_V1_CONFIG)
    csv_path = write_csv(tmp_path / "t.csv", [["a.mp4", "a caption"]])
    cfg = load_config(str(tmp_path / "v1.py"))
    assert "text_encoder.from_pretrained='./pretrained_models/t5_ckpts': no such folder: set " \
           "--text_encoder.from_pretrained to a hub id (DeepFloyd/t5-v1_1-xxl" in bad_input(validate, cfg, "train", "r")
    cfg = load_config(str(tmp_path / "v1.py"), ["--text_encoder.from_pretrained=DeepFloyd/t5-v1_1-xxl"])
    assert "data_path='CSV_PATH': set --data_path=" in bad_input(validate, cfg, "train", str(tmp_path / "r"))
    cfg["data_path"] = csv_path
    validate(cfg, "train", str(tmp_path / "r"))  # PixArt-XL-2-512x512.pth: a hub file, fetched when the model loads
    cfg["model"] = dict(cfg["model"], from_pretrained="PRETRAINED_MODEL")  # v1.0's inference configs
    assert "model.from_pretrained: model weights 'PRETRAINED_MODEL': no such file" in \
        bad_input(validate, cfg, "train", str(tmp_path / "r"))
    cfg["save_dir"] = str(tmp_path / "s")
    assert bad_input(validate, cfg, "sample").endswith("(or pass --ckpt)")
    cfg["ckpt"] = "OpenSora-v1-HQ-16x256x256.pth"
    validate(cfg, "sample")


# ============================================================================= sample.py: prompts, outputs, sidecars, command lines
def test_sample_writes_mp4(tiny_run):
    tmp = tiny_run
    out = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--config", str(ROOT / "configs/shapes.py"), "--ckpt",
         f"{tmp}/a/shapes", "--save_dir", f"{tmp}/s", "a red circle moving right", "a blue square moving up",
         "--model.depth=1", "--model.hidden_size=32", "--sample_scheduler.num_sampling_steps=3",
         "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}"],
        cwd=tmp, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    paths = [line for line in out.stdout.split() if line.endswith(".mp4")]
    digest = {p: hashlib.sha256(p.encode()).hexdigest()[:8] for p in ("a red circle moving right",
                                                                    "a blue square moving up")}
    assert [os.path.basename(p) for p in paths] == [  # the slug, a hash of the whole prompt, the seed
        f"a_red_circle_moving_right-{digest['a red circle moving right']}-seed42.mp4",
        f"a_blue_square_moving_up-{digest['a blue square moving up']}-seed43.mp4"]  # the k-th prompt: seed + k
    cfg = load_config(str(ROOT / "configs/shapes.py"))
    frames = read_video(paths[0])
    assert frames.shape == (cfg["num_frames"], *cfg["image_size"], 3) and frames.dtype == np.uint8


def run_sample_main(monkeypatch, config, *args):
    """sample.main() in this process with the VAE and T5 builders replaced by a failure: -> its BadInput message
    (which sample.py run as a program prints alone, exit code 2: test_reliability_entry_points_print_one_line)."""
    import sample

    def built(*a, **k):
        raise AssertionError("an encoder was built before the weights and overrides were checked")
    monkeypatch.setattr(sample, "build_vae", built)
    monkeypatch.setattr(sample, "build_text_encoder", built)
    monkeypatch.setattr(sys, "argv", ["sample.py", "--config", str(ROOT / f"configs/{config}.py"), "a prompt", *args])
    with pytest.raises(BadInput) as error:
        sample.main()
    message = str(error.value)
    assert "\n" not in message, message  # one line
    return message


def test_sample_missing_weights_fail_before_encoders(tmp_path, monkeypatch):
    import huggingface_hub
    monkeypatch.chdir(tmp_path)  # no ./pretrained_models here
    missing = str(tmp_path / "nope.pth")
    assert missing in run_sample_main(monkeypatch, "shapes", "--ckpt", missing)
    (tmp_path / "run").mkdir()  # a run folder without checkpoints
    assert "no stepNNNNNNN.pt" in run_sample_main(monkeypatch, "shapes", "--ckpt", str(tmp_path / "run"))

    def offline(*a, **k):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    message = run_sample_main(monkeypatch, "opensora/inference/16x256x256")  # the config's hub file cannot be fetched
    assert "https://huggingface.co/hpcai-tech/Open-Sora/resolve/main/OpenSora-v1-HQ-16x256x256.pth" in message


def test_sample_unreadable_weights_and_edit_ratios_fail_before_encoders(tmp_path, monkeypatch):
    """Weights that exist but cannot be read, and an edit ratio the config's DPM-Solver cannot sample: one line each
    before the VAE and T5 are built (run_sample_main fails if they are built first)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty.pt: empty file" in run_sample_main(monkeypatch, "shapes", "--ckpt", "empty.pt")
    vio.write_video(str(tmp_path / "a.png"), torch.rand(3, 1, 8, 8) * 2 - 1)
    message = run_sample_main(monkeypatch, "shapes", "--ckpt", "empty.pt", "--reference-path", "a.png",
                              "--mask-strategy", "0,0,0,0,1,0.4")
    assert message.startswith("dpm-solver: edit ratios") and "iddpm" in message


def test_sample_refuses_scheduler_overrides_it_would_ignore(tmp_path, monkeypatch):
    # configs/shapes.py samples with its sample_scheduler: --scheduler.* would change nothing
    message = run_sample_main(monkeypatch, "shapes", "--ckpt", str(tmp_path), "--scheduler.num_sampling_steps=3")
    assert "--sample_scheduler." in message and "dpm-solver" in message


def test_reliability_output_names_unique_and_never_overwritten(tmp_path):
    import sample
    for a, b in [("\U0001f3ac\U0001f3a5\U0001f37f", "\u4e00\u4e2a\u7ea2\u8272\u7684\u5706"),  # both were video-seed42
                 ("A RED circle, moving right?", "a red circle moving right")]:
        assert sample.video_name(a, 42) != sample.video_name(b, 42)
    assert re.fullmatch(r"video-[0-9a-f]{8}-seed42", sample.video_name("\U0001f3ac", 42))
    assert toy.caption_from_name(sample.video_name("a red circle moving right", 3) + ".mp4") == \
        "a red circle moving right"  # the judge still reads the caption back
    cfg = load_config(str(ROOT / "configs/shapes.py"), ["--sample_scheduler.num_sampling_steps=2"])
    t5 = TX.build_text_encoder(dict(T5, model_max_length=32))
    model = build_model(dict(cfg["model"], depth=1, hidden_size=32), input_size=(4, 8, 8), in_channels=3,
                        caption_channels=32, model_max_length=32).eval()

    def generate(**kwargs):
        return sample.generate(cfg, model, V.build_vae(cfg["vae"]), t5, ["a red circle"] * 2, [42, 42], str(tmp_path),
                               torch.device("cpu"), torch.float32, progress=False, **kwargs)
    first = generate()
    assert len(set(first)) == 2  # the same prompt and seed twice: two files
    stamps = {p: os.stat(p).st_mtime_ns for p in first}
    second = generate()  # a later run keeps the earlier videos
    assert set(second).isdisjoint(first) and len(os.listdir(tmp_path)) == 8  # (each with its sidecar)
    assert all(os.stat(p).st_mtime_ns == t for p, t in stamps.items())
    assert generate(overwrite=True) == first and len(os.listdir(tmp_path)) == 8  # asked: replaced


def test_mask_strategies_of_the_readme_on_a_tiny_model(tmp_path):
    import sample
    image, clip = str(tmp_path / "a.png"), str(tmp_path / "b.mp4")
    vio.write_video(image, torch.rand(3, 1, 8, 8) * 2 - 1)
    vio.write_video(clip, torch.rand(3, 8, 8, 8) * 2 - 1, fps=4)
    cfg = load_config(str(ROOT / "configs/shapes.py"), ["--num_frames=8", "--condition_frame_length=2"])
    t5, vae = TX.build_text_encoder(dict(T5, model_max_length=32)), V.build_vae(cfg["vae"])
    model = build_model(dict(cfg["model"], depth=1, hidden_size=32, patch_size=(1, 2, 2)), input_size=(8, 8, 8),
                        in_channels=3, caption_channels=32, model_max_length=32).eval()
    t5.y_embedder, seen, cpu = model.y_embedder, [], torch.device("cpu")

    def recording(x, t, y, **kwargs):
        seen.append((x[:1], kwargs["x_mask"][:1]))
        return model(x, t, y, **kwargs)
    # the README's examples at 8 frames: image-to-video, extension, connecting, editing, a 3-loop video
    cases = [("0", image, 1), ("0,0,0,-4,4", clip, 1), ("0;0,1,0,-1,1", f"{image};{clip}", 1),
             ("0,0,0,0,8,0.4", clip, 1), ("0", image, 3)]
    for sampler, (strategy, paths, loops) in [(s, c) for s in ("iddpm", "dpm-solver") for c in cases]:
        c, seen[:] = dict(cfg, reference_path=[paths], mask_strategy=[strategy], loop=loops), []
        scheduler, conditions = build_scheduler(dict(type=sampler, num_sampling_steps=3)), sample.read_conditions(
            dict(c, sample_scheduler=dict(type="iddpm")), ["a"])  # (c's dpm-solver refuses edit ratios there)
        args = (c, scheduler, 3, recording, vae, t5, (3, 8, 8, 8), ["a"], conditions, cpu, torch.float32, {}, None,
                t5.encode(["a"]), False)
        if sampler == "dpm-solver" and "0.4" in strategy:  # edit ratios: IDDPM's (sample.py: before any model loads)
            assert "iddpm" in bad_input(sample.sample_batch, *args)
            assert "iddpm" in bad_input(sample.read_conditions, c, ["a"])
            continue
        with torch.no_grad():
            out = sample.sample_batch(*args)
        assert out.shape == (1, 3, 8 + 6 * (loops - 1), 8, 8) and torch.isfinite(out).all()
        want = torch.zeros(1, 3, 8, 8, 8)
        cond = diffusion.apply_mask_strategy(want, [sample.encode_references(paths.split(";"), c, vae, cpu, None)],
                                             [strategy])[0] < 1
        # the model calls that see the references as they are: IDDPM's until the step where it re-noises them
        edit = float(strategy.split(",")[5]) if strategy.count(",") == 5 else 0.0
        held = [k for k in range(len(seen)) if sampler == "dpm-solver" or 2 - k % 3 > int(edit * 3)]
        assert held and all(torch.equal(seen[k][0][0][:, cond], want[0][:, cond]) for k in held if k < 3)
        assert all(torch.equal(m[0], ~cond) for _, m in seen[:2])  # conditions seen as such (t0)
        for k in held[len(held) // loops:]:  # each later loop starts from the last 2 frames of the one before
            assert torch.equal(seen[k][0][0][:, :2], out[0][:, 6 * (k // 3):6 * (k // 3) + 2])
        if sampler == "dpm-solver":
            assert torch.equal(out[0][:, :8][:, cond], want[0][:, cond])  # DPM-Solver keeps them exactly
    assert "ref_id" in bad_input(sample.read_conditions, dict(cfg, reference_path=[image], mask_strategy=["0;0,1"]), ["a"])
    assert "no such file" in bad_input(sample.read_conditions, dict(cfg, reference_path=["nope.png"]), ["a"])


def test_reliability_sample_prompts_starting_with_dash(tmp_path, monkeypatch):
    import sample
    message = run_sample_main(monkeypatch, "shapes", "-glitchy")  # argparse took it for an unknown flag
    assert "'-glitchy' is not a flag of sample.py" in message and "after '--'" in message
    monkeypatch.undo()  # the real encoders: identity VAE, tiny T5
    (tmp_path / "step0000001.pt").write_bytes(b"")  # (read by the stub below)
    prompts = []
    monkeypatch.setattr(sample, "newest_that_loads", lambda path, read: (f"{path}/step0000001.pt", {}))
    monkeypatch.setattr(sample, "load_weights", lambda model, sd, path: None)
    monkeypatch.setattr(sample, "generate", lambda cfg, model, vae, t5, batch, *a, **k: prompts.extend(batch) or [])
    monkeypatch.setattr(sys, "argv", ["sample.py", "--config", str(ROOT / "configs/shapes.py"), "--ckpt", str(tmp_path),
                                      "a", "--model.depth=1", "--", "-glitchy", "--seed=3"])
    sample.main()
    assert prompts == ["a", "-glitchy", "--seed=3"]  # after '--' everything is a prompt


def sample_main_until_generate(monkeypatch, tmp_path):
    """-> run(*argv): sample.main() with the shapes config's real (tiny) encoders and model, stub weights, and
    generate() replaced by a recorder of what it was given."""
    import sample
    (tmp_path / "w.pt").write_bytes(b"weights")
    seen = {}
    monkeypatch.setattr(sample, "newest_that_loads", lambda path, read: (str(tmp_path / "w.pt"), {}))
    monkeypatch.setattr(sample, "load_weights", lambda model, sd, path: None)
    monkeypatch.setattr(sample, "generate", lambda cfg, model, vae, t5, prompts, seeds, save_dir, *a, **k:
                        seen.update(cfg=cfg, prompts=prompts, seeds=seeds, save_dir=save_dir) or [])

    def run(*argv):
        seen.clear()
        monkeypatch.setattr(sys, "argv", ["sample.py", *argv])
        sample.main()
        return seen
    return run


def test_sample_command_lines_as_v1_users_type_them(tmp_path, monkeypatch):
    run, shapes = sample_main_until_generate(monkeypatch, tmp_path), str(ROOT / "configs/shapes.py")
    (tmp_path / "p.txt").write_text("from the file\n\nand another\n")
    # v1.0's form: the config first, its hyphenated flags with a space; an override with a space in its value
    seen = run(shapes, "a prompt", "--ckpt-path", str(tmp_path / "w.pt"), "--prompt-path", str(tmp_path / "p.txt"),
               "--batch-size", "3", "--save-dir", str(tmp_path / "out"), "--seed", "5", "--cfg-scale", "2.5",
               "--num-sampling-steps", "7", "--image_size=(16, 16)", "--model.depth=1")
    cfg = seen["cfg"]
    assert seen["prompts"] == ["a prompt", "from the file", "and another"] and seen["seeds"] == [5, 6, 7]
    assert (cfg["ckpt"], cfg["batch_size"], seen["save_dir"]) == (str(tmp_path / "w.pt"), 3, str(tmp_path / "out"))
    assert cfg["image_size"] == (16, 16) and cfg["model"]["depth"] == 1
    assert (cfg["sample_scheduler"]["cfg_scale"], cfg["sample_scheduler"]["num_sampling_steps"]) == (2.5, 7)
    # --prompt= is the prompt, not an abbreviation of --prompt_path; the config's prompts are not added to it
    seen = run("--config", shapes, "--prompt=a red fox", "--ckpt", str(tmp_path / "w.pt"), "--seed=0")
    assert seen["prompts"] == ["a red fox"] and seen["seeds"] == [0]
    seen = run(shapes, "--ckpt", str(tmp_path / "w.pt"), "--prompt", "a", "--prompt", "b", "c")
    assert seen["prompts"] == ["c", "a", "b"] and seen["seeds"] == [42, 43, 44]
    for argv, message in [((shapes, "--prompt_pat", "x"), "'--prompt_pat' is not a flag of sample.py"),
                          ((shapes, "--prompt_pat=x"), "prompt_pat"),
                          ((shapes, "--config", shapes, "a"), "two configs"),
                          (("--from_json", str(tmp_path / "p.txt"), "--seed", "3"), "from the file, not seed"),
                          ((shapes, "a", "--ckpt", str(tmp_path / "w.pt"), "--prompt-path", str(tmp_path / "none.txt")),
                           "none.txt: no such file")]:
        with pytest.raises(BadInput, match=message):
            run(*argv)


def test_sample_placeholders_one_line_and_no_folder(tmp_path, monkeypatch):
    """v1.0's placeholder values: one line naming the key, before any encoder loads, and nothing created."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"")  # weights that are not read: the problem is found first
    for args, key in [(("--model.from_pretrained=PRETRAINED_MODEL",), "model.from_pretrained"),
                      (("--ckpt=x.pt", "--text_encoder.from_pretrained=./pretrained_models/t5_ckpts"),
                       "text_encoder.from_pretrained"),
                      (("--ckpt=x.pt", "--sp_size=2"), "sp_size")]:
        message = run_sample_main(monkeypatch, "opensora/inference/16x256x256", "--save_dir=out", *args)
        assert key in message, message
        assert os.listdir(tmp_path) == ["x.pt"]


@pytest.mark.parametrize("sampler", ["iddpm", "dpm-solver"])
def test_sample_video_independent_of_its_batch(sampler):
    """Each prompt draws its noise from its own generator: its latents alone equal those beside other prompts, and a
    batch of one equals v1.0's global-generator sampling from the same seed (bit for bit)."""
    import diffusion as D
    t5 = TX.build_text_encoder(dict(T5, model_max_length=32))
    torch.manual_seed(0)
    model = randomized(build_model(dict(type="STDiT", depth=1, hidden_size=32, num_heads=2, patch_size=(1, 2, 2)),
                                   input_size=(2, 4, 4), in_channels=4, caption_channels=32, model_max_length=32)).eval()
    t5.y_embedder = model.y_embedder
    scheduler = D.build_scheduler(dict(type=sampler, num_sampling_steps=4))

    def run(prompts, seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds] if seeds else None
        return scheduler.sample(model, t5, (4, 2, 4, 4), prompts, "cpu", progress=False, generators=gens)
    alone = run(["a red circle"], [3])
    beside = run(["a blue square", "a red circle", "x"], [7, 3, 9])
    assert rel_err(beside[1], alone[0]) < 1e-5 and rel_err(beside[0], alone[0]) > 0.1
    torch.manual_seed(3)
    assert torch.equal(run(["a red circle"], None), alone)


def test_sample_torchrun_splits_prompts_sp_and_sidecar_reproduce(tiny_run):
    """torchrun: 2 processes split 3 prompts (each written once), and --sp_size 2 samples each over both (Ulysses);
    the videos equal the one-process ones. The sidecar names everything, and --from_json makes the video again."""
    tmp = tiny_run
    prompts = ["a red circle moving right", "a blue square moving up", "a green circle moving left"]
    args = [str(ROOT / "sample.py"), str(ROOT / "configs/shapes.py"), "--ckpt", f"{tmp}/a/shapes", *prompts,
            "--batch_size=2", "--model.depth=1", "--model.hidden_size=32", "--sample_scheduler.num_sampling_steps=3",
            "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    outs = {}
    for name, launch, extra in [("one", [sys.executable], []), ("dp", torchrun + [str(free_port())], []),
                                ("sp", torchrun + [str(free_port())], ["--sp_size", "2"])]:
        out = subprocess.run(launch + args + extra + ["--save_dir", f"{tmp}/{name}"], cwd=tmp, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        outs[name] = sorted(line for line in out.stdout.split() if line.endswith(".mp4"))
        assert len(outs[name]) == 3 and sorted(os.listdir(tmp / name)) == sorted(
            [os.path.basename(p) for p in outs[name]] + [os.path.basename(p)[:-4] + ".json" for p in outs[name]])
    one = {os.path.basename(p): vio.read_video(p).astype(int) for p in outs["one"]}
    assert len({v.tobytes() for v in one.values()}) == 3 and all(v.std() > 1 for v in one.values())  # real videos
    for name in ("dp", "sp"):
        for p in outs[name]:
            diff = np.abs(vio.read_video(p).astype(int) - one[os.path.basename(p)]).max()
            assert diff <= 1, (name, p, diff)  # measured: 0 (a batch of 1 or 2, Ulysses: the same uint8 frames)
    blue = next(p for p in outs["one"] if "a_blue_square" in p)
    side = json.load(open(blue[:-4] + ".json"))
    weights = tmp / "a/shapes/step0000006.pt"  # the newest
    assert (side["prompt"], side["seed"], side["sampler"], side["num_sampling_steps"]) == (prompts[1], 43,
                                                                                           "dpm-solver", 3)
    assert side["weights"]["sha256"] == hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert side["config"]["model"]["depth"] == 1 and set(side["versions"]) >= {"python", "torch", "av"}
    assert side["num_frames"] == 4 and side["image_size"] == [8, 8] and side["diffusion_s"] > 0
    out = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--from_json", blue[:-4] + ".json",
                          "--save_dir", f"{tmp}/again"], cwd=tmp, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    again = out.stdout.split()[-1]
    assert os.path.basename(again) == os.path.basename(blue)
    assert np.abs(vio.read_video(again).astype(int) - one[os.path.basename(again)]).max() <= 1  # measured: 0


def test_reliab_6_from_json_checks_the_sidecar_like_a_config(tmp_path, monkeypatch):
    """--from_json reads a sidecar's config as a config file (keys, types, shapes; an unknown key is an error) and its
    fields as checked input: each bad one is one line before any encoder loads; its save_dir is never used."""
    cfg = json.loads(json.dumps(load_config(str(ROOT / "configs/shapes.py"), ["--save_dir=/elsewhere"]), default=str))
    good = dict(prompt="a red circle moving right", seed=3, config=cfg, weights=dict(
        name="w.pt", path=str(tmp_path / "w.pt"), sha256=hashlib.sha256(b"weights").hexdigest()))
    side = tmp_path / "side.json"
    (tmp_path / "w.pt").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)

    def run_with(**changes):  # -> the one line, before the VAE and T5 load
        import sample
        monkeypatch.setattr(sample, "build_vae", lambda *a, **k: pytest.fail("the VAE loaded first"))
        monkeypatch.setattr(sys, "argv", ["sample.py", "--from_json", str(side)])
        side.write_text(json.dumps(good | changes))
        with pytest.raises(BadInput) as error:
            sample.main()
        return str(error.value)
    no_sampler = {k: v for k, v in cfg.items() if k not in ("scheduler", "sample_scheduler")}
    for changes, message in [(dict(config=[1, 2]), "side.json: its config is a tuple, not a dict"),
                             (dict(config=cfg | dict(bogus=1)), "unknown config key 'bogus'"),
                             (dict(config=cfg | dict(image_size="big")), "image_size='big': give (height, width)"),
                             (dict(config=no_sampler), "scheduler=None: give a dict with a type"),
                             (dict(weights="w.pt"), "not a sample.py sidecar (TypeError"),
                             (dict(weights=dict(name="w.pt")), "not a sample.py sidecar (KeyError: 'path')"),
                             (dict(prompt=5), "prompt=5: give a list of prompts"),
                             (dict(seed="one"), "seed='one': give a whole number")]:
        assert message in run_with(**changes), changes
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    run = sample_main_until_generate(monkeypatch, tmp_path)  # a good sidecar: its save_dir is not used
    side.write_text(json.dumps(good))
    seen = run("--from_json", str(side))
    assert seen["save_dir"] == DEFAULTS["save_dir"] and seen["prompts"] == [good["prompt"]] and seen["seeds"] == [3]
    assert run("--from_json", str(side), "--save_dir", str(tmp_path / "mine"))["save_dir"] == str(tmp_path / "mine")


def test_reliab_7_an_interrupted_sample_run_keeps_its_videos_and_goes_on(tiny_run, monkeypatch, tmp_path):
    """Each video and its sidecar are written as soon as the video is decoded: stopped while writing the second of
    three, the first is there whole; --skip_existing then makes only the two missing ones."""
    import sample
    prompts = ["a red circle moving right", "a blue square moving up", "a green circle moving left"]
    argv = ["sample.py", "--config", str(ROOT / "configs/shapes.py"), "--ckpt", f"{tiny_run}/a/shapes", *prompts,
            "--save_dir", str(tmp_path), "--batch_size=1", "--model.depth=1", "--model.hidden_size=32",
            "--sample_scheduler.num_sampling_steps=3",
            "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}"]
    written, write_video = [], sample.write_video

    def stopped_at_the_second(path, *a, **k):
        if len(written) == 1:
            raise KeyboardInterrupt  # as Ctrl-C, or a kill
        written.append(write_video(path, *a, **k))
        return written[-1]
    monkeypatch.setattr(sample, "write_video", stopped_at_the_second)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        sample.main()
    first = sample.video_name(prompts[0], 42)
    assert sorted(os.listdir(tmp_path)) == [first + ".json", first + ".mp4"]
    assert json.load(open(tmp_path / (first + ".json")))["prompt"] == prompts[0]
    written.clear()
    monkeypatch.setattr(sample, "write_video", lambda path, *a, **k: written.append(path) or write_video(path, *a, **k))
    monkeypatch.setattr(sys, "argv", argv + ["--skip_existing"])
    sample.main()
    assert [os.path.basename(p) for p in written] == [sample.video_name(p, 42 + k) + ".mp4"
                                                      for k, p in enumerate(prompts) if k]
    assert len(os.listdir(tmp_path)) == 6 and all(json.load(open(p[:-4] + ".json")) for p in written)


# ============================================================================= app.py: the web demo (gradio_client, load and faults, a real browser)
APP_TINY = ["--model.depth=1", "--model.hidden_size=32",
            "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}"]


@pytest.fixture(scope="module")
def app_server(tiny_run):
    """app.py serving tiny_run's model on a free port (in this process): -> (module, url, save_dir, gradio_client)."""
    app = pytest.importorskip("app", reason="gradio is not installed (pip install -r requirements.txt)")
    client = pytest.importorskip("gradio_client")
    out = tiny_run / "app"
    args = app.parse([str(ROOT / "configs/shapes.py"), "--ckpt", f"{tiny_run}/a/shapes", "--save_dir", str(out),
                      "--port", str(free_port()), "--queue", "32", *APP_TINY])
    demo = app.serve(args, block=False)
    yield app, demo.local_url, out, client.Client(demo.local_url, verbose=False)
    demo.close()


def test_app_video_equals_sample_py(app_server, tiny_run):
    app, url, out, client = app_server
    video, side, gallery = client.predict("a red circle moving right", 7, "dpm-solver", 3, 4.0, api_name="/generate")
    cli = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--config", str(ROOT / "configs/shapes.py"),
                          "--ckpt", f"{tiny_run}/a/shapes", "--save_dir", f"{tiny_run}/cli", "--seed", "7",
                          "--sample_scheduler.num_sampling_steps=3", *APP_TINY, "a red circle moving right"],
                         cwd=tiny_run, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    frames = read_video(video)
    assert frames.std() > 0 and np.array_equal(frames, read_video(cli.stdout.split()[-1]))  # same code path
    side = json.load(open(side))
    assert (side["prompt"], side["seed"], side["num_sampling_steps"], side["cfg_scale"]) == (
        "a red circle moving right", 7, 3, 4.0) and side["weights"]["sha256"]
    assert os.path.basename(video) in [os.path.basename(g["video"]) for g in gallery]


def test_app_bad_input_is_one_line(app_server, tmp_path, monkeypatch):
    app, url, out, client = app_server
    from gradio_client.exceptions import AppError
    for inputs, says in ((("", 0, "dpm-solver", 3, 4.0), "prompt of 0 characters"),
                         (("x" * 501, 0, "dpm-solver", 3, 4.0), "prompt of 501 characters"),
                         (("a prompt", 0, "dpm-solver", 1, 4.0), "steps 1, guidance 4.0: give a prompt of 1 to 500 "
                                                                 "characters, a seed, steps >= 2"),
                         (("a prompt", None, "iddpm", 3, 4.0), "seed None"),
                         (("a prompt", 0, "iddpm", 3, -1.0), "less than minimum value 0")):  # (gradio's check)
        with pytest.raises(AppError) as error:
            client.predict(*inputs, api_name="/generate")
        assert says in str(error.value) and "\n" not in str(error.value), str(error.value)
    monkeypatch.chdir(tmp_path)  # no outputs/shapes here; a bad flag or config: sample.py's line, before any model
    assert "run the quick start first" in bad_input(app.parse, [])
    assert "--port" in bad_input(app.parse, ["--port", "x"])
    assert bad_input(app.parse, [str(ROOT / "configs/shapes.py"), "--model.depht=1"]) == bad_input(
        lambda: sample_configure(["--config", str(ROOT / "configs/shapes.py"), "--model.depht=1"]))


def sample_configure(argv):
    import sample
    return sample.configure(*sample.parse_args(argv))


def test_app_20_concurrent_requests_one_at_a_time(app_server, monkeypatch):
    app, url, out, client = app_server
    import sample
    generate, active, most = sample.generate, [0], [0]

    def counted(*a, **k):
        active[0] += 1
        most[0] = max(most[0], active[0])
        try:
            return generate(*a, **k)
        finally:
            active[0] -= 1
    monkeypatch.setattr(sample, "generate", counted)
    jobs = [client.submit("a blue square moving up", 100 + i, "dpm-solver", 2, 4.0, api_name="/generate")
            for i in range(20)]
    videos = [job.result(timeout=300)[0] for job in jobs]
    assert most[0] == 1 and len({os.path.basename(v) for v in videos}) == 20  # none lost, none at the same time


def test_app_stop_and_lost_client_do_not_stick_the_queue(app_server, monkeypatch):
    app, url, out, client = app_server
    import sample
    calls = []
    monkeypatch.setattr(sample, "place_text_encoder", lambda *a: calls.append(time.sleep(0.5)))  # a slower start
    job = client.submit("a green circle moving left", 1, "iddpm", 200, 4.0, api_name="/generate")
    while job.status().code.name not in ("PROCESSING", "PROGRESS"):
        time.sleep(0.05)
    job.cancel()  # the Stop button's request
    lost = subprocess.Popen([sys.executable, "-c", "import sys, time; from gradio_client import Client; c = Client("
                             f"{url!r}, verbose=False); c.submit('a red square moving up', 2, 'iddpm', 200, 4.0, "
                             "api_name='/generate'); time.sleep(1.5)"])  # exits mid-run: its connection drops
    assert lost.wait(timeout=60) == 0
    t0 = time.perf_counter()
    video, _, _ = client.predict("a yellow square moving down", 3, "dpm-solver", 2, 4.0, api_name="/generate")
    assert os.path.exists(video) and time.perf_counter() - t0 < 60 and calls
    assert not list(out.glob("a_green_circle_moving_left-*seed1.mp4"))  # the stopped run wrote nothing


def test_app_serves_no_file_outside_its_folders(app_server):
    app, url, out, client = app_server
    import urllib.error
    import urllib.request
    client.predict("a red circle moving right", 5, "dpm-solver", 2, 4.0, api_name="/generate")
    inside = next(out.glob("*.mp4"))

    def status(path):
        try:
            return urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=30).status
        except urllib.error.HTTPError as e:
            return e.code
    assert status(inside) == 200
    assert all(status(p) in (403, 404) for p in ("/etc/passwd", ROOT / "sample.py", out.parent / "a/shapes/loss.txt"))


def test_app_in_a_real_browser(app_server, tmp_path):
    """Headless chromium: type a prompt, click Generate, see the progress bar and a playing <video>; a screenshot.
    Skips without playwright or chromium, except under CI (env CI), where .ci/run installs both."""
    app, url, out, client = app_server
    try:
        from playwright.sync_api import sync_playwright
        assert os.path.exists("/usr/bin/chromium"), "no /usr/bin/chromium"
    except (ImportError, AssertionError) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no browser ({e}): apt-get install chromium; pip install playwright")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport=dict(width=1200, height=900))
        page.goto(url)
        page.get_by_label("Prompt").fill("a green circle moving left")
        page.get_by_label("number input for Steps").fill("60")  # long enough to watch the bar
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector(".progress-text, .eta-bar", timeout=60000)
        page.wait_for_function("() => { const v = document.querySelector('video');"
                               " return v && v.readyState >= 2 && v.duration > 0 }", timeout=120000)
        page.screenshot(path=tmp_path / "app.png", full_page=True)
        browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10000


def test_lora_sample_scale_zero_equals_no_adapter_recorded_and_from_json(tiny_lora_run):
    """--lora FOLDER:0 gives the video of no adapter bit for bit; the sidecar names the adapter (path, sha256, scale)
    and --from_json samples with it again; --lora FOLDER (scale 1) changes the video."""
    tmp, folder = tiny_lora_run, tiny_lora_run / "la/shapes/lora"
    args = [str(ROOT / "sample.py"), str(ROOT / "configs/shapes.py"), "--ckpt", f"{tmp}/a/shapes", "--seed=5",
            "a red circle moving right", "--model.depth=1", "--model.hidden_size=32",
            "--sample_scheduler.num_sampling_steps=3",
            "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}"]
    videos = {}
    for name, extra in [("none", []), ("zero", ["--lora", f"{folder}:0"]), ("one", ["--lora", str(folder)]),
                        ("again", None)]:
        cmd = args + extra if extra is not None else [str(ROOT / "sample.py"), "--from_json", videos["one"][:-4] + ".json"]
        out = subprocess.run([sys.executable, *cmd, "--save_dir", f"{tmp}/lora_{name}"], cwd=tmp, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        videos[name] = out.stdout.split()[-1]
    frames = {k: vio.read_video(v).astype(int) for k, v in videos.items()}
    assert np.array_equal(frames["zero"], frames["none"]) and np.array_equal(frames["again"], frames["one"])
    assert not np.array_equal(frames["one"], frames["none"])
    sha = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    for name, scale in (("zero", 0.0), ("one", 1.0), ("again", 1.0)):
        assert json.load(open(videos[name][:-4] + ".json"))["lora"] == [dict(path=str(folder), sha256=sha, scale=scale)]


def test_lora_sample_wrong_base_one_line_before_encoders(tiny_lora_run, tmp_path, monkeypatch):
    from safetensors.torch import save_file
    folder = tiny_lora_run / "la/shapes/lora"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(192, 64)}, tmp_path / "other.safetensors")
    message = run_sample_main(monkeypatch, "shapes", "--ckpt", str(tmp_path / "other.safetensors"), "--lora", str(folder))
    assert f"--lora {folder}: an adapter of another base than {tmp_path}/other.safetensors" in message
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):  # (one line: errors.one_line_errors)
        run_sample_main(monkeypatch, "shapes", "--ckpt", str(tmp_path / "other.safetensors"), "--lora", str(tmp_path))


# ============================================================================= train.py: resume, stops, logging, torchrun
TINY_TRAIN = ["--make_shapes=32", "--batch_size=8", "--model.depth=1", "--model.hidden_size=32", "--log_every=1",
              "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}",
              "--eval_prompts=None"]


def test_train_resume_is_exact(tiny_run):
    tmp = tiny_run
    run_train(tmp, "--max_steps=3", "--ckpt_every=3", f"--outputs={tmp}/b")
    run_train(tmp, "--max_steps=6", "--ckpt_every=3", f"--outputs={tmp}/b", f"--load={tmp}/b/shapes")
    a, b = losses(tmp / "a/shapes"), losses(tmp / "b/shapes")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(a[s] == b[s] for s in a), (a, b)  # bit-identical on CPU
    ckpt = torch.load(tmp / "b/shapes/step0000006.pt", weights_only=True)
    assert ckpt["step"] == 6 and set(ckpt) >= {"model", "ema", "optimizer", "rng", "config", "epoch", "start"}
    ema = torch.load(tmp / "a/shapes/step0000006.pt", weights_only=True)["ema"]  # the EMA resumes exactly too
    assert ema.keys() == ckpt["model"].keys() and all(torch.equal(ema[k], ckpt["ema"][k]) for k in ema)
    assert not torch.equal(ema["final_layer.linear.weight"], ckpt["model"]["final_layer.linear.weight"])


def test_train_stops_after_max_bad_steps_in_a_row(tiny_run):
    """lr 1e30: the first update blows the weights up, every later loss is non-finite and skipped, then the run stops."""
    with pytest.raises(AssertionError, match="step 4: 3 non-finite losses/gradients in a row"):
        run_train(tiny_run, "--max_steps=20", "--lr=1e30", "--max_bad_steps=3", f"--outputs={tiny_run}/bad")


def test_train_lowers_loss(tmp_path):
    run_train(tmp_path, "--max_steps=40", "--ckpt_every=1000", "--lr=2e-3", f"--outputs={tmp_path}/o",
              "--make_shapes=8")  # one fixed batch of 8 clips
    loss = losses(tmp_path / "o/shapes")
    first, last = sum(loss[s] for s in range(1, 6)) / 5, sum(loss[s] for s in range(36, 41)) / 5
    assert last < 0.7 * first, (first, last)  # measured 0.98 -> 0.54


WANDB_STUB = """import json
def init(**kwargs):
    open("wandb_calls.jsonl", "a").write(json.dumps(dict(init=sorted(kwargs))) + "\\n")
def log(scalars, step):
    open("wandb_calls.jsonl", "a").write(json.dumps(dict(step=step, **scalars)) + "\\n")
"""


def test_train_logs_to_wandb(tmp_path):
    """--wandb=True: wandb.init once, then wandb.log every log_every steps with the loss that loss.txt holds (a stub
    wandb module stands in for the real one, which needs an account)."""
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub/wandb.py").write_text(WANDB_STUB)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "stub"))
    run_train(tmp_path, "--max_steps=4", "--log_every=2", "--wandb=True", f"--outputs={tmp_path}/o", env=env)
    calls = [json.loads(line) for line in open(tmp_path / "wandb_calls.jsonl")]
    assert "config" in calls[0]["init"] and [c["step"] for c in calls[1:]] == [2, 4]
    assert [c["loss"] for c in calls[1:]] == [losses(tmp_path / "o/shapes")[s] for s in (2, 4)]


def test_reliability_resume_skips_a_truncated_checkpoint_and_cuts_loss_txt(tiny_run):
    """Killed while its step-6 checkpoint was copied (truncated) and after writing loss lines past it: --load takes
    step 3 (saying why not 6), loss.txt keeps steps 1-3 and gets 4-6 anew, equal to the uninterrupted run's; with
    keep_last=1 only the new step 6 remains."""
    tmp, run = tiny_run, tiny_run / "c/shapes"
    run.mkdir(parents=True)
    for name in ("step0000003.pt", "loss.txt"):
        (run / name).write_bytes((tmp / "a/shapes" / name).read_bytes())
    blob = (tmp / "a/shapes/step0000006.pt").read_bytes()
    (run / "step0000006.pt").write_bytes(blob[:len(blob) // 2])
    with open(run / "loss.txt", "a") as f:
        f.write("7 0.5\n8 0.")  # steps the killed run logged after its last checkpoint, the last one cut short
    out = run_train(tmp, "--max_steps=6", "--ckpt_every=3", f"--load={run}", "--keep_last=1")
    assert f"skipping {run}/step0000006.pt: cannot be read" in out.stderr
    assert f"resumed from {run}/step0000003.pt at step 3" in out.stdout
    assert [line.split()[0] for line in open(run / "loss.txt")] == ["1", "2", "3", "4", "5", "6"]
    assert losses(run) == losses(tmp / "a/shapes")  # bit-identical to the run that was never interrupted
    assert sorted(os.listdir(run)) == [".lock", "loss.txt", "step0000006.pt"]
    assert torch.load(run / "step0000006.pt", weights_only=True)["step"] == 6


def test_train_torchrun_zero2_seq_two_ranks(tmp_path):
    """torchrun --nproc_per_node 2 train.py configs/shapes.py --plugin=zero2-seq --sp_size=2 runs on the CPU (gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "train.py"), str(ROOT / "configs/shapes.py"), *TINY_TRAIN, "--plugin=zero2-seq", "--sp_size=2",
           f"--data_path={tmp_path}/data/train.csv", f"--cache_dir={tmp_path}/data/cache", "--max_steps=3",
           f"--outputs={tmp_path}/o"]  # the demo's one frame token: its 16 spatial tokens are split over the 2 ranks
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(losses(tmp_path / "o/shapes")) == [1, 2, 3]
    assert "2 ranks (dp 1 x sp 2)" in out.stdout
    with pytest.raises(subprocess.CalledProcessError):  # zero2-seq without sp, or zero2 with sp: refused
        subprocess.run([sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/shapes.py"), "--sp_size=2"],
                       cwd=tmp_path, capture_output=True, check=True, timeout=120)


def train_until(tmp, *args, until):
    """train.py started in the background (toy size), once until(): -> the process (the caller kills it)."""
    run = subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/shapes.py"), *TINY_TRAIN,
                            f"--data_path={tmp}/data/train.csv", f"--cache_dir={tmp}/data/cache", *args], cwd=tmp,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        if until() or run.poll() is not None:
            return run
        time.sleep(0.1)
    return run


def test_reliab_1_one_run_at_a_time_in_a_run_folder(tmp_path):
    """While a run trains, a second train.py on its folder stops at once, naming the first's pid and host; after the
    first is killed (kill -9) its lock is taken over, its temp file removed, and loss.txt holds one line a step, cut
    to the step resumed from (also with lines of another run in it)."""
    run = tmp_path / "o/shapes"
    first = train_until(tmp_path, "--max_steps=100000", "--ckpt_every=2", "--keep_last=1", f"--outputs={tmp_path}/o",
                        until=lambda: checkpoint_files(str(run)))
    try:
        assert first.poll() is None and checkpoint_files(str(run))
        second = run_train(tmp_path, "--max_steps=2", f"--load={run}", code=2)
        assert second.stderr == (f"error: {run} is in use by another run (pid {first.pid} on host "
                                 f"{socket.gethostname()}): wait for it to end, stop it, or choose another folder\n")
    finally:
        first.kill()
        first.wait()
    left = killed_while_writing(run / "step0000900.pt")
    with open(run / "loss.txt", "a") as f:
        f.write("\n1 123.0\n2 456.0\n")  # another run's lines, after the first's
    step = max(int(os.path.basename(p)[4:-3]) for p in checkpoint_files(str(run)))
    out = run_train(tmp_path, f"--max_steps={step + 2}", f"--load={run}")
    assert f"at step {step}" in out.stdout and not os.path.exists(left)
    assert [line.split()[0] for line in open(run / "loss.txt")] == [str(s) for s in range(1, step + 3)]
    assert not [f for f in os.listdir(run) if ".tmp" in f]


def test_reliab_10_a_checkpoint_of_another_size_is_refused_before_the_encoders(tiny_run):
    """--load of a checkpoint whose weights do not fit the config's model: one line naming the shapes, straight after
    the file is read: before the data, the cache, the VAE, the text encoder or the model are built."""
    tmp = tiny_run
    out = run_train(tmp, "--max_steps=8", f"--load={tmp}/a/shapes", "--model.hidden_size=64",
                    f"--cache_dir={tmp}/new_cache", code=2)
    assert out.stderr.startswith(f"error: {tmp}/a/shapes/step0000006.pt: foreign key layout for this STDiT: shape "
                                 "mismatch (") and "x_embedder.proj.bias (32,) vs model (64,)" in out.stderr
    assert out.stdout == "" and not os.path.exists(tmp / "new_cache")


def test_reliab_10_an_older_checkpoint_without_model_args_is_refused_before_the_model_is_built(tiny_run):
    """An older file (no model_args) of another size: its weights are fitted once the encoders give the shapes, before
    the model is built, whose from_pretrained (a file that does not fit either) would otherwise fail first."""
    tmp, old = tiny_run, tiny_run / "old/shapes/step0000006.pt"
    ckpt = torch.load(tmp / "a/shapes/step0000006.pt", weights_only=True)
    old.parent.mkdir(parents=True)
    torch.save({k: v for k, v in ckpt.items() if k != "model_args"}, old)
    out = run_train(tmp, "--max_steps=8", f"--load={old.parent}", "--model.hidden_size=64",
                    f"--model.from_pretrained={tmp}/a/shapes/step0000003.pt", code=2)
    assert out.stderr.startswith(f"error: {old}: foreign key layout for this STDiT: shape mismatch (")
    assert "x_embedder.proj.bias (32,) vs model (64,)" in out.stderr and "give weights of this model" in out.stderr
    assert "parameters" not in out.stdout  # (train.py names the model's size once it is built)


def test_lora_train_resume_exact_and_checkpoints_hold_adapters(tiny_lora_run):
    tmp, base = tiny_lora_run, tiny_lora_run / "a/shapes/step0000006.pt"  # the base: tiny_run's newest
    lora_args = ["--lora.r=4", f"--model.from_pretrained={tmp}/a/shapes", "--lr=1e-2", "--ckpt_every=2"]
    run_train(tmp, "--max_steps=2", *lora_args, f"--outputs={tmp}/lb")
    run_train(tmp, "--max_steps=4", *lora_args, f"--outputs={tmp}/lb", f"--load={tmp}/lb/shapes")
    a, b = losses(tmp / "la/shapes"), losses(tmp / "lb/shapes")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and a == b  # bit-identical on CPU
    ckpt, again = (torch.load(tmp / f"{r}/shapes/step0000004.pt", weights_only=True) for r in ("la", "lb"))
    assert ckpt["base"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest() and ckpt["ema"] is None
    assert all(".lora_" in k for k in ckpt["model"]) and set(ckpt["optimizer"]["exp_avg"]) == set(ckpt["model"])
    assert all(torch.equal(ckpt["model"][k], again["model"][k]) for k in ckpt["model"])
    size = os.path.getsize(tmp / "la/shapes/lora/adapter_model.safetensors")
    print(f"LoRA r=4 on the tiny demo model: adapter {size} B, checkpoint "
          f"{os.path.getsize(tmp / 'la/shapes/step0000004.pt')} B, base {base.stat().st_size} B")
    with pytest.raises(AssertionError, match="trained on the base .*a/shapes, not .*step0000003.pt"):
        run_train(tmp, "--max_steps=6", *lora_args[:1], f"--model.from_pretrained={tmp}/a/shapes/step0000003.pt",
                  f"--outputs={tmp}/lb", f"--load={tmp}/lb/shapes")


# ============================================================================= configs/: every config trains two steps and samples at toy size
# ---- every config in configs/, at toy size: 2 training steps (train configs) and one sample, on the CPU ----
CONFIGS = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.py"))



@pytest.mark.parametrize("short, recipe", [("16x256", "16x256x256"), ("16x512", "16x512x512"), ("64x512", "64x512x512")])
def test_configs_short_names_are_v1_recipes(short, recipe):
    """configs/16x256.py (the design card's training command) holds the same values as v1.0's own file."""
    assert load_config(str(ROOT / f"configs/{short}.py")) == load_config(str(ROOT / f"configs/opensora/train/{recipe}.py"))


TINY_ENCODERS = dict(  # size overrides of each text encoder type: a random tiny one of the same class
    t5=["--text_encoder.from_pretrained=None", "--text_encoder.model_max_length=8",
        "--text_encoder.config={'d_model': 16, 'd_kv': 8, 'd_ff': 32, 'num_layers': 1, 'num_heads': 2}"],
    clip=["--text_encoder.from_pretrained=None", "--text_encoder.config={'hidden_size': 16, 'intermediate_size': 32, "
          "'num_hidden_layers': 1, 'num_attention_heads': 2}"], classes=[])


def tiny_overrides(cfg, tmp):
    """Only sizes change: a tiny model, VAE and text encoder of the config's own types, tiny data, few steps."""
    h, w = cfg["image_size"]
    size = tuple(4 * round(n * 16 / min(h, w) / 4) for n in (h, w))  # the short side 16 pixels, the aspect kept
    args = [f"--num_frames={cfg['num_frames'] if cfg['num_frames'] <= 4 else 2}", "--frame_interval=1", f"--image_size={size}",
            "--model.depth=2", "--model.hidden_size=24", "--model.num_heads=2", "--model.from_pretrained=None",
            "--batch_size=2", "--num_workers=0", "--plugin=zero2", "--sp_size=1", f"--outputs={tmp}/outputs",
            f"--save_dir={tmp}/samples", f"--data_path={tmp}/train.csv", "--max_steps=2", "--ckpt_every=2",
            "--eval_prompts=None", "--log_every=1",
            f"--{'sample_scheduler' if cfg['sample_scheduler'] else 'scheduler'}.num_sampling_steps=2",
            *TINY_ENCODERS[cfg["text_encoder"]["type"]]]
    if cfg["vae"]["type"] != "identity":
        args += ["--vae.from_pretrained=None",
                 "--vae.config={'block_out_channels': (16, 16), 'norm_num_groups': 4, 'layers_per_block': 1}"]
    return args + (["--make_shapes=0", "--cache_dir=None"] if cfg["cache_dir"] else [])


def tiny_data(tmp, num_frames, size):
    """Two clips and an image (image rows in every data set), captioned with class ids: every encoder reads them."""
    rows = []
    for i in range(2):
        frames = np.random.default_rng(i).integers(0, 256, (max(2 * num_frames, 4), *size, 3), dtype=np.uint8)
        rows.append([vio.write_video(str(tmp / f"clip{i}.mp4"), frames), str(i + 1)])
    rows.append([vio.write_video(str(tmp / "image.png"), frames[:1]), "3"])
    write_csv(tmp / "train.csv", rows)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_and_samples_at_toy_size(name, tmp_path, monkeypatch):
    import runpy

    import sample
    monkeypatch.chdir(tmp_path)
    path = str(ROOT / "configs" / name)
    cfg = load_config(path)
    args = tiny_overrides(cfg, tmp_path)
    small = load_config(path, args)
    tiny_data(tmp_path, small["num_frames"], small["image_size"])
    prompts = ["1", "2"]
    if cfg["data_path"] is not None:  # a training config: 2 steps, then sample from the run folder
        no_lora = ["--lora=None"] * bool(cfg["lora"])  # (no base here; LoRA on the toy: test_lora_train_resume_..)
        monkeypatch.setattr(sys, "argv", ["train.py", path, *args, *no_lora])
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        run = tmp_path / "outputs" / os.path.splitext(os.path.basename(name))[0]
        assert sorted(losses(run)) == [1, 2] and all(np.isfinite(list(losses(run).values())))
        ckpt = str(run)
    else:  # a sampling config: random weights of the model it builds
        ckpt = str(tmp_path / "random.pt")
        enc = TX.build_text_encoder(small["text_encoder"])
        vae = V.build_vae(small["vae"])
        model = build_model(small["model"], input_size=vae.get_latent_size((small["num_frames"], *small["image_size"])),
                            in_channels=vae.out_channels, caption_channels=enc.output_dim,
                            model_max_length=enc.model_max_length)
        torch.save(randomized(model).state_dict(), ckpt)
    monkeypatch.setattr(sys, "argv", ["sample.py", "--config", path, "--ckpt", ckpt, *prompts, *args])
    sample.main()
    ext = ".png" if small["num_frames"] == 1 else ".mp4"
    written = sorted(os.listdir(tmp_path / "samples"))
    written = [f for f in written if not f.endswith(".json")]  # (the sidecars: test_sample_sidecar_..)
    assert written == sorted(sample.video_name(p, small["seed"] + k) + ext for k, p in enumerate(prompts)), written
    frames = read_video(str(tmp_path / "samples" / written[0]))
    assert frames.shape == (small["num_frames"], *small["image_size"], 3)


# ============================================================================= prepare.py: folder, check, filter, scenes, cache
def faststart_cut(src, dst):
    """src remuxed with its index first (as web mp4s are), then cut: the index lists frames that are not there."""
    with av.open(src) as i, av.open(dst, "w", options={"movflags": "faststart"}) as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(i.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                o.mux(packet)
    blob = open(dst, "rb").read()
    open(dst, "wb").write(blob[:len(blob) * 2 // 3])
    return dst


def video_folder(tmp_path):
    """videos/: captioned by .txt (an H.264 mp4, a png), by captions.csv (a VP9 webm, an mkv in a subfolder), a short
    4K clip captioned by .txt, an mp4 without caption; broken: a cut mp4, a text file named .mp4, an empty .webm, and
    a cut mp4 whose index comes first (it opens, but frames are missing: only `check` finds it)."""
    v, frames = tmp_path / "videos", pan_frames(40)
    (v / "sub").mkdir(parents=True)
    vio.write_video(str(v / "a.mp4"), frames, 30)
    (v / "a.txt").write_text("The video shows a pan\nover colours ")
    write_png(v / "img.png", frames[0])
    (v / "img.png").with_suffix(".txt").write_text("a still")
    vio.write_video(str(v / "c.webm"), frames[:30], 30, codec="libvpx-vp9", options={})
    vio.write_video(str(v / "sub" / "b.mkv"), frames, 25)
    big = np.zeros((4, 2160, 3840, 3), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None] * 50
    vio.write_video(str(v / "big4k.mp4"), big, 30, options=dict(preset="ultrafast"))
    (v / "big4k.txt").write_text("a 4K clip")
    vio.write_video(str(v / "nocap.mp4"), frames, 30)
    cut = vio.write_video(str(v / "cut.mp4"), frames, 30)
    open(cut, "wb").write(open(cut, "rb").read()[:3000])
    (v / "text.mp4").write_text("not a video")
    (v / "empty.webm").write_bytes(b"")
    faststart_cut(str(v / "a.mp4"), str(v / "fast_cut.mp4"))
    write_csv(tmp_path / "captions.csv", [["sub/b.mkv", "an mkv"], ["c.webm", "a webm"]])
    return v


def test_prepare_folder_check_filter_then_train(tmp_path, capfd):
    v = video_folder(tmp_path)
    raw, good, train = (str(tmp_path / n) for n in ("raw.csv", "good.csv", "train.csv"))
    prepare.main(["folder", str(v), raw, "--captions", str(tmp_path / "captions.csv"), "--workers", "2"])
    rows = {os.path.basename(r[0]): r for r in prepare.read_rows(raw)}
    assert sorted(rows) == ["a.mp4", "b.mkv", "big4k.mp4", "c.webm", "fast_cut.mp4", "img.png", "nocap.mp4"]
    assert rows["a.mp4"][1:] == ["The video shows a pan over colours", "40", "30", "48", "64"]
    assert rows["b.mkv"][1:] == ["an mkv", "40", "25", "48", "64"] and rows["c.webm"][1:3] == ["a webm", "30"]
    assert rows["big4k.mp4"][1:] == ["a 4K clip", "4", "30", "2160", "3840"] and rows["img.png"][2] == "1"
    assert rows["nocap.mp4"][1] == "" and rows["fast_cut.mp4"][2] == "40"  # its index lists 40 frames
    bad = {os.path.basename(p): reason for p, reason in prepare.read_rows(prepare.bad_path(raw))}
    assert sorted(bad) == ["cut.mp4", "empty.webm", "text.mp4"] and all("unreadable" in r for r in bad.values())
    err = capfd.readouterr()
    assert all(f"bad: {v / n}:" in err.err for n in bad) and "2 rows have no caption" in err.out  # nocap, fast_cut
    prepare.main(["check", raw, good, "--workers", "2"])
    assert [r[0] for r in prepare.read_rows(prepare.bad_path(good))] == [str(v / "fast_cut.mp4")]
    assert "truncated: the container lists 40 frames" in prepare.read_rows(prepare.bad_path(good))[0][1]
    assert len(prepare.read_rows(good)) == 6 and not os.path.exists(good + ".partial")
    prepare.main(["filter", good, train, "--fmin", "4", "--remove_empty_caption", "--remove_caption_prefix"])
    rows = {os.path.basename(r[0]): r for r in prepare.read_rows(train)}
    assert sorted(rows) == ["a.mp4", "b.mkv", "big4k.mp4", "c.webm"]  # img.png: 1 frame; nocap.mp4: no caption
    assert rows["a.mp4"][1] == "A pan over colours"
    with pytest.raises(BadInput, match="row 1: no num_frames"):
        prepare.main(["filter", str(tmp_path / "captions.csv"), str(tmp_path / "x.csv"), "--fmax", "5"])
    out = run_train(tmp_path, f"--data_path={train}", "--cache_dir=None", "--make_shapes=0", "--max_steps=2",
                    "--batch_size=2", f"--outputs={tmp_path}/o", "--image_size=(16, 16)")
    assert sorted(losses(tmp_path / "o/shapes")) == [1, 2], out.stderr[-2000:]


def test_prepare_relative_paths_are_relative_to_the_csv(tmp_path, monkeypatch):
    """check, filter (and scenes) read a relative video path as train.py does, relative to the CSV's folder, whatever
    the current folder; OUT's paths are absolute, so data.read_csv finds the same files wherever OUT is."""
    (tmp_path / "data").mkdir()
    vio.write_video(str(tmp_path / "data/a.mp4"), pan_frames(10), 30)
    write_csv(tmp_path / "data/rows.csv", [["a.mp4", "The video shows a pan"], ["gone.mp4", "missing"]])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    prepare.main(["check", "../data/rows.csv", "good.csv", "--workers", "1"])
    assert prepare.read_rows("good.csv") == [[str(tmp_path / "data/a.mp4"), "The video shows a pan", "10", "30", "48",
                                              "64"]]
    assert prepare.read_rows(prepare.bad_path("good.csv")) == [[str(tmp_path / "data/gone.mp4"), "missing file"]]
    prepare.main(["filter", "../data/rows.csv", "../train.csv", "--remove_caption_prefix"])
    assert data.read_csv(str(tmp_path / "train.csv")) == [(str(tmp_path / "data/a.mp4"), "A pan"),
                                                          (str(tmp_path / "data/gone.mp4"), "missing")]


_real_describe = prepare.describe


def _describe_until_power_cut(path):  # module level: the pool pickles it by name
    if path.endswith("c.webm"):
        raise RuntimeError("power cut")
    return _real_describe(path)


def test_prepare_interrupted_leaves_no_file_and_resumes(tmp_path, monkeypatch, capfd):
    v, raw = video_folder(tmp_path), str(tmp_path / "raw.csv")
    monkeypatch.setattr(prepare, "describe", _describe_until_power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        prepare.main(["folder", str(v), raw, "--workers", "1"])  # one worker: the files in order, a.mp4 first
    assert not os.path.exists(raw) and not os.path.exists(prepare.bad_path(raw))
    journal = [json.loads(line) for line in open(raw + ".partial")]
    assert [os.path.basename(p) for p, _ in journal] == ["a.mp4", "big4k.mp4"]
    with open(raw + ".partial", "w") as f:  # what a.mp4 gave: changed, to show it is not computed again
        f.write(json.dumps([journal[0][0], [999, "30", 48, 64]]) + "\n" + json.dumps(journal[1]) + "\n[\"cut sh")
    monkeypatch.undo()
    prepare.main(["folder", str(v), raw, "--workers", "1"])
    assert "resuming, 2 of 10 rows already done" in capfd.readouterr().out
    assert prepare.read_rows(raw)[0][2] == "999" and not os.path.exists(raw + ".partial")
    assert len(prepare.read_rows(raw)) == 7 and len(prepare.read_rows(prepare.bad_path(raw))) == 3


def test_prepare_scenes(tmp_path, monkeypatch):
    import importlib.util
    frames = np.zeros((120, 64, 96, 3), np.uint8)
    frames[:40], frames[40:70], frames[70:] = (220, 30, 30), (20, 20, 20), (30, 30, 220)  # 3 scenes
    src = write_csv(tmp_path / "src.csv", [[vio.write_video(str(tmp_path / "s.mp4"), frames, 30), "three"],
                                           [str(tmp_path / "missing.mp4"), "gone"]])
    out = str(tmp_path / "clips.csv")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "scenedetect" else find_spec(name))
    with pytest.raises(SystemExit, match="pip install scenedetect"):
        prepare.main(["scenes", src, str(tmp_path / "clips"), out])
    monkeypatch.undo()
    if find_spec("scenedetect") is None:
        pytest.skip("PySceneDetect is not installed (pip install scenedetect)")
    prepare.main(["scenes", src, str(tmp_path / "clips"), out, "--min_seconds=0.5", "--max_seconds=1.2",
                  "--shorter_size=32", "--workers=1"])
    rows = prepare.read_rows(out)  # red 40 frames -> 36 (+4 dropped), black 30, blue 50 -> 36 (+14 dropped)
    assert [(os.path.basename(r[0]), r[1:]) for r in rows] == [
        (f"s_scene-{k}.mp4", ["three", n, "30", "32", "48"]) for k, n in enumerate(["36", "30", "36"])]
    for (path, *_), colour in zip(rows, [(220, 30, 30), (20, 20, 20), (30, 30, 220)]):
        assert np.abs(vio.read_video(path).astype(int) - colour).max() < 12
    assert prepare.read_rows(prepare.bad_path(out))[0][0] == str(tmp_path / "missing.mp4")


def odd_folder(tmp_path):
    """A good mp4, a FIFO named like one, and a copy of the mp4 whose name is not UTF-8 (b'caf\\xe9.mp4')."""
    v = tmp_path / "v"
    v.mkdir()
    vio.write_video(str(v / "a.mp4"), pan_frames(10), 30)
    os.mkfifo(v / "fifo.mp4")
    with open(os.path.join(os.fsencode(v), b"caf\xe9.mp4"), "wb") as f:
        f.write((v / "a.mp4").read_bytes())
    return v


def prepare_cmd(*args):
    return subprocess.run([sys.executable, str(ROOT / "prepare.py"), *map(str, args), "--workers", "1"],
                          capture_output=True, text=True, timeout=120)  # a hang fails here


def test_reliab_2_a_name_that_is_not_utf8_is_skipped_by_its_escaped_bytes(tmp_path):
    """prepare.py folder goes past the name (and the FIFO) to write its CSV; the report names it by escaped bytes."""
    v, raw = odd_folder(tmp_path), tmp_path / "raw.csv"
    out = prepare_cmd("folder", v, raw)
    assert out.returncode == 0 and f"{raw}: 1 rows; 2 bad" in out.stdout, out.stderr[-2000:]
    assert [r[0] for r in prepare.read_rows(raw)] == [str(v / "a.mp4")]
    assert dict(prepare.read_rows(prepare.bad_path(raw))) == {
        f"{v}/caf\\xe9.mp4": "a name that is not UTF-8 (skipped: rename it)",
        str(v / "fifo.mp4"): "not a regular file (a FIFO, device or folder: never opened)"}
    assert f"bad: {v}/caf\\xe9.mp4: a name that is not UTF-8" in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["raw.csv", "raw_bad.csv", "v"]  # no journal, no temp file


def test_reliab_3_a_fifo_named_like_a_video_is_never_opened(tmp_path):
    """prepare.py check (and folder: test_reliab_2) skips it with its reason; the training data set too."""
    v, good = odd_folder(tmp_path), tmp_path / "good.csv"
    write_csv(tmp_path / "rows.csv", [[str(v / "a.mp4"), "a"], [str(v / "fifo.mp4"), "f"]])
    out = prepare_cmd("check", tmp_path / "rows.csv", good)
    assert out.returncode == 0 and f"{good}: 1 rows; 1 bad" in out.stdout, out.stderr[-2000:]
    assert prepare.read_rows(prepare.bad_path(good)) == [[str(v / "fifo.mp4"), "not a regular file (a FIFO, device "
                                                                               "or folder: never opened)"]]
    with pytest.raises(vio.BadSample, match="not a regular file"):  # train.py's data set: skipped and counted
        vio.decode(str(v / "fifo.mp4"), 4, 1, None)


def test_reliab_9_binary_inputs_and_bad_flags_are_one_line(tmp_path):
    """A binary CSV or prompt file, check --workers 0, filter into a folder, fmin > fmax and a CSV with no num_frames:
    each one line (exit code 2), and nothing left behind (no temp file, no empty OUT.partial)."""
    import sample
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)))
    rows, out, folder = write_csv(tmp_path / "rows.csv", [["a.mp4", "a caption"]]), tmp_path / "o.csv", tmp_path / "d"
    folder.mkdir()
    for argv, message in [(["filter", binary, out], "binary.csv: not a CSV of UTF-8 text"),
                          (["check", rows, out, "--workers", "0"], "--workers 0: give 1 or more processes"),
                          (["filter", rows, folder], r"d: cannot be written \(IsADirectoryError"),
                          (["filter", rows, out, "--fmin", "100", "--fmax", "1"], "--fmin 100 > --fmax 1")]:
        with pytest.raises(BadInput, match=message):
            prepare.main([str(a) for a in argv])
    with pytest.raises(BadInput, match="--prompt_path .*binary.csv: not UTF-8 text"):
        sample.read_prompts(str(binary), "--prompt_path")
    done = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "filter", rows, out, "--fmin", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == (f"error: {rows}, row 1: no num_frames in its third column "
                                                    "(['a.mp4', 'a caption']): run check (or folder) first\n")
    assert sorted(os.listdir(tmp_path)) == ["binary.csv", "d", "rows.csv"] and not os.listdir(folder)


# ============================================================================= bench.py: the FLOP count and the loader benchmark
@pytest.mark.parametrize("kind", ["STDiT", "PixArt", "DiT", "Latte", "DiT-label"])
def test_flop_count_matches_torch_counter(short_keys, kind):
    """bench.flops (analytic) against torch's FlopCounterMode on a small model of each architecture, forward. The
    written-out attention path (every attention of these models is short without a mask) makes the attention FLOPs
    countable: FlopCounterMode does not count the CPU SDPA kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    import bench
    cls, label = M.MODELS[kind.split("-")[0]], kind.endswith("label")
    caption = {} if label else dict(caption_channels=24)
    m = cls(input_size=(3, 4, 6), depth=3, hidden_size=32, num_heads=2, model_max_length=5, **caption,
            **(dict(condition="label_7") if label else {})).eval()
    x = torch.randn(2, 4, 3, 4, 6)
    y = torch.tensor([1, 2]) if label else torch.randn(2, 1, 1 if cls in (M.DiT, M.Latte) else 5, 24)
    L.SHORT_KEYS = 64  # every attention written out
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x, torch.tensor([5.0, 500.0]), y)  # no mask: every caption key attends, as bench counts
    counted = counter.get_total_flops() / x.shape[0]
    ours = bench.flops(m, tuple(x.shape[2:]), 5, train=False)
    assert abs(ours - counted) / counted < 0.01, (ours, counted)
    assert bench.flops(m, tuple(x.shape[2:]), 5, train=True) == 3 * ours


def test_bench_loader_measures_the_loader(tmp_path):
    import bench
    clip = vio.write_video(str(tmp_path / "p.mp4"), pan_frames(90), 30, options=dict(g="30"))
    csv_path = write_csv(tmp_path / "b.csv", [[clip, "pan"]] * 20)
    assert bench.loader_rate(csv_path, 4, 16, 2, 1, 4) > 0
    assert bench.window_seconds(clip, 2.0, frames=4) > 0 and bench.window_seconds(clip, 0.1, seek=False) > 0
