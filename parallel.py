"""Distributed training on raw torch.distributed: process groups, a sharded sampler, ZeRO-2 AdamW, Ulysses sequence
parallelism. No DDP/FSDP/DeepSpeed/ColossalAI: every collective is written out below.

    ctx = parallel.setup(sp_size)                              # torchrun's env; plain `python` = one process
    sampler = parallel.ShardedSampler(len(dataset), ctx.dp_rank, ctx.dp_size, seed=42)
    parallel.enable_sequence_parallel(model, ctx.sp_group)     # only when sp_size > 1
    opt = parallel.ZeroAdamW(model.named_parameters(), lr=2e-5)
    loss.backward(); grad_norm = opt.step(grad_clip=1.0)

Layout: world = dp_size x sp_size. Consecutive ranks form a sequence-parallel (SP) group: they read the same samples
and each holds 1/sp of their tokens (T/sp frames, or S/sp tokens of every frame). Rank r has sp_rank = r % sp_size and
dp_rank = r // sp_size (which samples).
Single process (no RANK in the environment): no process group is made, ctx's groups are None and every collective
below is skipped, so train.py runs the same code on a laptop.
"""
import math
import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from errors import BadInput

# torch 2.13 renamed these two (the old names warn); requirements allow torch >= 2.1, which only has the old ones
reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# ----------------------------------------------------------------------------- process groups
def setup(sp_size=1):
    """torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT -> process groups; NCCL on GPU, gloo on CPU."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:  # a plain `python train.py`: one process, no process group, collectives skipped
        if sp_size != 1:
            raise BadInput(f"sp_size={sp_size} needs several processes: launch with torchrun --nproc_per_node N, "
                           f"N a multiple of {sp_size}")
        return SimpleNamespace(rank=0, world_size=1, local_rank=0, device=torch.device("cuda" if cuda else "cpu"),
                               is_main=True, dp_group=None, dp_rank=0, dp_size=1, sp_group=None, sp_rank=0, sp_size=1)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if sp_size < 1 or world % sp_size:
        raise BadInput(f"sp_size={sp_size}: the {world} processes of torchrun must divide by it (--nproc_per_node)")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    dp_size = world // sp_size
    # every rank must create every group, in the same order: the SP groups (consecutive ranks), then the DP groups
    sp_groups = [dist.new_group(list(range(i * sp_size, (i + 1) * sp_size))) for i in range(dp_size)]
    dp_groups = [dist.new_group(list(range(j, world, sp_size))) for j in range(sp_size)]
    return SimpleNamespace(rank=rank, world_size=world, local_rank=local_rank, device=device, is_main=rank == 0,
                           dp_group=dp_groups[rank % sp_size], dp_rank=rank // sp_size, dp_size=dp_size,
                           sp_group=sp_groups[rank // sp_size], sp_rank=rank % sp_size, sp_size=sp_size)


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x, group=None):
    """A tensor's mean over the group's ranks (default: all), as a Python float."""
    x = x.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(x, group=group)
        x /= dist.get_world_size(group)
    return x.item()


def all_gather_object(obj, group=None):
    """[obj of rank 0, obj of rank 1, ...] over the group (default: all); [obj] in a single process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


# ----------------------------------------------------------------------------- sampler
class ShardedSampler(torch.utils.data.Sampler):
    """This data-parallel rank's share of a per-epoch permutation. All ranks of an SP group have the same dp_rank, so
    they get the same samples; different dp ranks get disjoint ones. The tail that does not divide by dp_size is
    dropped, so every rank runs the same number of steps. set_epoch(epoch, start=k) skips this rank's first k samples
    of the epoch: a resumed run continues with exactly the samples it would have seen."""

    def __init__(self, num_samples, dp_rank, dp_size, seed=0, shuffle=True):
        self.num_samples, self.dp_rank, self.dp_size = num_samples, dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = num_samples // dp_size
        self.epoch = self.start = 0

    def set_epoch(self, epoch, start=0):
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"ShardedSampler: start {start} outside this rank's {self.per_rank} samples per epoch")
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = (np.random.default_rng((self.seed, self.epoch)).permutation(self.num_samples) if self.shuffle
                 else np.arange(self.num_samples))
        return iter(order[:self.per_rank * self.dp_size][self.dp_rank::self.dp_size][self.start:].tolist())

    def __len__(self):
        return self.per_rank - self.start


# ----------------------------------------------------------------------------- ZeRO-2 AdamW
class ZeroAdamW:
    """AdamW whose fp32 master weights and moments are sharded over ALL ranks (DP x SP): each holds 1/world of them.

    SP ranks hold the same weights as their DP peers and, thanks to split/gather_sequence's gradient scaling (below),
    their gradients average exactly like data-parallel ones; so the whole world is one ZeRO group and one averaging
    group: reduce-scatter (sum / world) gives each rank its shard of the true mean gradient, all-gather returns the
    updated weights. With one process this is plain AdamW on fp32 master weights (train.py has one code path).

    Parameters are packed, in order, into buckets of ~bucket_numel elements, each zero-padded to a multiple of the
    world size; a rank owns the same 1/world slice of every bucket. DURING backward, as soon as the last gradient of a
    bucket has been accumulated (a post-accumulate-grad hook), the bucket's gradients are flattened to fp32, freed, and
    reduce-scattered asynchronously while autograd goes on with the next bucket; so at most two full buckets are alive
    besides the 1/world shards, and the communication overlaps the backward pass. Collectives must run in the same
    order on every rank: they do, because every rank runs the same graph, so buckets complete in the same order (a
    bucket some of whose parameters got no gradient is reduced in step(), in bucket order, on every rank alike).
    Reduction and all-gather run in fp32 even for bf16 models (exact averages; twice the bytes of bf16).
    """

    def __init__(self, named_params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, bucket_numel=2**24):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.params = [(name, p) for name, p in named_params if p.requires_grad]
        if not self.params:
            raise ValueError("ZeroAdamW: no trainable parameters")
        self.buckets = [[]]  # lists of (name, param); a new one starts once the last holds bucket_numel elements
        for name, p in self.params:
            if sum(q.numel() for _, q in self.buckets[-1]) >= bucket_numel:
                self.buckets.append([])
            self.buckets[-1].append((name, p))
        self.sizes = [-(-sum(p.numel() for _, p in b) // self.world) * self.world for b in self.buckets]  # padded
        if self.world > 1:
            check_same_everywhere([p.detach() for _, p in self.params])
        self.master = self.own_shard(dict(self.params))  # (sum(sizes) / world,) fp32
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.master), torch.zeros_like(self.master)
        self.ema = self.master.clone()  # EMA of the fp32 master weights, sharded like them (update_ema)
        self.step_count = 0
        self.zero_grad()
        if self.world > 1:  # (one process: nothing to overlap; step() flattens the gradients a bucket at a time)
            for i, bucket in enumerate(self.buckets):
                for name, p in bucket:
                    p.register_post_accumulate_grad_hook(lambda p, i=i, name=name: self.grad_ready(i, name))

    @staticmethod
    def flatten(tensors, size):
        """Tensors of a bucket's params -> one fp32 vector of the padded size."""
        flat = torch.zeros(size, dtype=torch.float32, device=tensors[0].device)
        # one batched cat in the tensors' dtype, then one cast (a cat into fp32 launches a cast per tensor: 560 a step)
        flat[:sum(t.numel() for t in tensors)].copy_(torch.cat([t.reshape(-1) for t in tensors]))
        return flat

    def own_shard(self, values):
        """{name: full value} of every parameter -> this rank's slice of each bucket, concatenated (new, fp32)."""
        full = [self.flatten([values[n].detach().to(p.device) for n, p in b], size)
                for b, size in zip(self.buckets, self.sizes)]
        return torch.cat([f.chunk(self.world)[self.rank] for f in full])

    def shards(self, flat):
        """This rank's vector (master, a moment, the gradient) -> its slice of each bucket."""
        return flat.split([size // self.world for size in self.sizes])

    def gather(self, flat, dtype=torch.float32):
        """This rank's vector -> per bucket, [(name, param, full value as dtype)] of its parameters, one bucket's
        all-gather at a time (a generator: only one bucket is ever held in full)."""
        for bucket, size, shard in zip(self.buckets, self.sizes, self.shards(flat)):
            full = shard
            if self.world > 1:
                full = torch.empty(size, dtype=torch.float32, device=shard.device)
                all_gather_flat(full, shard.contiguous())
            sizes = [p.numel() for _, p in bucket]
            values = full[:sum(sizes)].to(dtype).split(sizes)  # one cast for the bucket
            yield [(name, p, value.view(p.shape)) for (name, p), value in zip(bucket, values)]

    def zero_grad(self):
        for _, p in self.params:
            p.grad = None
        self.ready = [set() for _ in self.buckets]  # names whose gradient has arrived, per bucket
        self.reduced = [None] * len(self.buckets)  # this rank's (size / world,) slice of each bucket's gradient sum
        self.in_flight = None  # the last async reduce-scatter

    def grad_ready(self, i, name):
        if self.reduced[i] is not None:
            raise RuntimeError(f"ZeroAdamW: a second gradient for {name} in one step (gradient accumulation over "
                               f"several backward passes is not supported: call step() after each backward)")
        self.ready[i].add(name)
        if len(self.ready[i]) == len(self.buckets[i]):
            self.reduce(i)

    def reduce(self, i):
        """Bucket i's gradients -> fp32 flat -> reduce-scatter (async) into this rank's shard; the full ones freed."""
        bucket, size = self.buckets[i], self.sizes[i]
        full = self.flatten([torch.zeros_like(p) if p.grad is None else p.grad for _, p in bucket], size)
        for _, p in bucket:
            p.grad = None  # ZeRO-2: the full gradient is not kept
        if self.world == 1:  # (called from step(): the buckets one after another, each bucket's gradients freed)
            self.reduced[i] = full
            return
        self.wait()  # at most one collective in flight: the full flat buckets do not pile up in memory
        self.reduced[i] = torch.empty(size // self.world, dtype=torch.float32, device=full.device)
        self.in_flight = reduce_scatter(self.reduced[i], full, async_op=True)

    def wait(self):
        if self.in_flight is not None:
            self.in_flight.wait()
            self.in_flight = None

    def step(self, grad_clip=None):
        """Average, clip, update, broadcast. Returns the global gradient norm before clipping (a float); if it is not
        finite, every rank skips the update (the norm is the same number everywhere)."""
        for i in range(len(self.buckets)):  # buckets whose hooks did not all fire (parameters without a gradient)
            if self.reduced[i] is None:
                self.reduce(i)
        self.wait()
        grads = self.reduced  # this rank's slice of each bucket's gradient SUM over the ranks
        self.zero_grad()
        norm_sq = torch.stack(torch._foreach_norm(grads)).square().sum()
        if self.world > 1:
            dist.all_reduce(norm_sq)
        norm = norm_sq.sqrt().item() / self.world  # of the mean gradient (over SP ranks see split_sequence)
        if not math.isfinite(norm):
            return norm
        clip = min(1.0, grad_clip / (norm + 1e-6)) if grad_clip else 1.0  # as torch.nn.utils.clip_grad_norm_
        # torch.optim.AdamW(fused=True)'s kernel on the shards: decoupled weight decay, bias-corrected moments, the
        # gradients divided by grad_scale (the world mean and the clip) as it reads them: one pass over the state
        # instead of the ~25 of the written-out update (train 16x256 on an H200: 22.05 -> 23.22 samples/s, bench.py)
        self.step_count += 1
        step = torch.tensor(float(self.step_count), device=self.master.device)
        torch._fused_adamw_(self.shards(self.master), grads, self.shards(self.exp_avg), self.shards(self.exp_avg_sq),
                            [], [step] * len(grads), lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
                            weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False,
                            grad_scale=torch.tensor(self.world / clip, device=step.device), found_inf=None)
        self.copy_master_to_params()
        return norm

    @torch.no_grad()
    def copy_master_to_params(self):
        dtypes = {p.dtype for _, p in self.params}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # (mixed: each param casts for itself)
        for items in self.gather(self.master, dtype):  # one cast per bucket, one multi-tensor copy
            torch._foreach_copy_([p for _, p, _ in items], [value for _, _, value in items])

    def update_ema(self, decay):
        """ema = decay * ema + (1 - decay) * master, on this rank's shard: the average of the fp32 weights (as v1.0's,
        which reads the master weights too), not of their bf16 copies, with no communication."""
        self.ema.lerp_(self.master, 1 - decay)

    def memory_bytes(self):
        """This rank's state: fp32 master weights, two moments and the EMA, 1/world of the (padded) parameters each."""
        return 4 * self.master.numel() * self.master.element_size()

    def full(self, key):
        """{name: full fp32 value on the CPU} of 'master', 'exp_avg', 'exp_avg_sq' or 'ema' on rank 0, None elsewhere
        (every rank must call it: the shards are all-gathered a bucket at a time)."""
        out = {name: value.to("cpu", copy=True) for items in self.gather(getattr(self, key)) for name, _, value in items
               if self.rank == 0}
        return out if self.rank == 0 else None

    def load_full(self, key, values):
        """The inverse of full(): this rank's shard of {name: value}; every trainable parameter must be there."""
        names = {n for n, _ in self.params}
        missing, unexpected = sorted(names - set(values)), sorted(set(values) - names)
        bad = [f"{n} {tuple(values[n].shape)} vs {tuple(p.shape)}" for n, p in self.params
               if n in values and values[n].shape != p.shape]
        if missing or unexpected or bad:
            raise ValueError(f"ZeroAdamW: '{key}' does not fit these parameters: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}, shape mismatch {bad[:5]}")
        getattr(self, key).copy_(self.own_shard(values))

    def state_dict(self):
        """The FULL state on rank 0 (None elsewhere; call it on every rank), keyed by parameter name, on the CPU: a
        checkpoint saved with N ranks loads with any other number. The EMA is saved as a model (train.py)."""
        sd = dict(step=self.step_count, **{key: self.full(key) for key in ("master", "exp_avg", "exp_avg_sq")})
        return sd if self.rank == 0 else None

    def load_state_dict(self, sd):
        """Take this rank's shard of a full state_dict() and write the master weights into the model."""
        for key in ("master", "exp_avg", "exp_avg_sq"):
            self.load_full(key, sd[key])
        self.step_count = int(sd["step"])
        self.copy_master_to_params()


def check_same_everywhere(tensors):
    """Ranks that start from different weights would silently train different models: fail at start-up instead."""
    s = torch.stack([sum(t.double().sum() for t in tensors), sum(t.double().square().sum() for t in tensors)])
    hi_lo = torch.cat([s, -s])  # the max over the ranks and (negated) the min, in one all-reduce
    dist.all_reduce(hi_lo, op=dist.ReduceOp.MAX)
    if not torch.equal(hi_lo[:2], -hi_lo[2:]):
        raise RuntimeError("ZeroAdamW: the model's parameters differ between ranks; seed the model's initialisation "
                           "identically on every rank (or load the same weights) before making the optimizer")


# ----------------------------------------------------------------------------- sequence parallelism (Ulysses)
# (the callers check that the split dims divide by sp: split_tokens, ulysses' heads; the gathered ones do by making)
def _split(x, dim, group):
    return x.chunk(dist.get_world_size(group), dim)[dist.get_rank(group)].contiguous()


def _gather(x, dim, group):
    pieces = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, x.contiguous(), group=group)
    return torch.cat(pieces, dim)


def _all_to_all(x, group, scatter_dim, gather_dim):
    # (n, ...): piece i goes to rank i of the group
    send = torch.stack(x.chunk(dist.get_world_size(group), scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), gather_dim)  # piece i came from rank i


class _Collective(torch.autograd.Function):
    """A collective with a written-out backward: forward(x, fwd, bwd) returns fwd(x), backward bwd(gradient)."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):
        ctx.bwd = bwd
        return fwd(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.bwd(grad), None, None


# Gradient scaling. Between split_sequence and gather_sequence each SP rank computes its own part of the sequence;
# before and after, every rank computes the same thing on the whole sequence. Summed over the SP ranks, a parameter
# used in the duplicated parts gets sp_size x its gradient, one used in the split part only 1x. So gather's backward
# multiplies by sp_size (then every path sums to sp_size x) and split's backward divides by it (the duplicated part
# below the split sees the true gradient on every rank, again sp_size x in the sum). Averaging over the SP ranks, as
# ZeroAdamW's world-mean does, then gives exactly the gradient of the unsplit model (test_parallel proves it).
def split_sequence(x, dim, group):
    """This rank's 1/sp of x along dim; backward all-gathers the gradient (scaled, see above)."""
    n = dist.get_world_size(group)
    return _Collective.apply(x, lambda t: _split(t, dim, group), lambda g: _gather(g, dim, group) / n)


def gather_sequence(x, dim, group):
    """All ranks' pieces concatenated along dim; backward keeps this rank's slice of the gradient (scaled, above)."""
    n = dist.get_world_size(group)
    return _Collective.apply(x, lambda t: _gather(t, dim, group), lambda g: _split(g, dim, group) * n)


def all_to_all(x, group, scatter_dim, gather_dim):
    """x cut into sp pieces along scatter_dim, piece i sent to rank i, the received ones concatenated along gather_dim;
    backward: the all-to-all the other way round (the adjoint of an all-to-all)."""
    return _Collective.apply(x, lambda t: _all_to_all(t, group, scatter_dim, gather_dim),
                             lambda g: _all_to_all(g, group, gather_dim, scatter_dim))


def ulysses(attn_fn, group):
    """attn_fn on the full sequence for sequence-sharded inputs: q, k, v (B, N/sp, H, D) -> (B, N/sp, H, D).
    An all-to-all trades the sequence split for a head split, (B, N, H/sp, D); heads are independent, so attn_fn runs
    unchanged on its H/sp heads; a second all-to-all trades back."""
    n = dist.get_world_size(group)

    def attend(q, k, v):
        if q.shape[2] % n:
            raise ValueError(f"Ulysses: {q.shape[2]} attention heads are not divisible by sp_size {n}")
        # one all-to-all instead of three: (3, B, N/sp, H, D) -> (3, B, N, H/sp, D)
        q, k, v = all_to_all(torch.stack([q, k, v]), group, 3, 2).unbind(0)
        return all_to_all(attn_fn(q, k, v), group, 1, 2)  # (B, N/sp, H, D)

    return attend


def check_sequence_parallel(cls, heads, tokens, sp):
    """Ulysses' rule (config.validate asks it before anything loads, enable_sequence_parallel again): an STDiT whose
    heads divide by sp, and its frame tokens or its spatial tokens too (tokens: the (T', H', W') grid)."""
    T, H, W = tokens
    if not getattr(cls, "temporal", False):
        raise BadInput(f"sp_size={sp}: sequence parallelism is for STDiT, not {cls.__name__}: use sp_size=1 (the "
                       "processes of torchrun then split prompts or batches)")
    if heads % sp:
        raise BadInput(f"sp_size={sp}: the model's {heads} attention heads must divide by it")
    if T % sp and H * W % sp:
        raise BadInput(f"sp_size={sp}: the {T} frame tokens or the {H * W} spatial tokens must divide by it")


def enable_sequence_parallel(model, group):
    """Split an STDiT's tokens over the group's ranks after the embedding, gather them before the final layer.
    Frames when the frame tokens divide by sp (each rank holds T/sp whole frames: spatial attention is frame-local, the
    temporal attentions go through Ulysses), else spatial rows (each rank holds S/sp tokens of every frame: the spatial
    attentions go through Ulysses, the temporal ones are local) -- an image or a clip patched into one frame token
    still splits. Cross-attention sees the whole caption from any token either way. The choice is made per forward
    (and kept for its backward's recomputation) from the input's shape."""
    n = dist.get_world_size(group)
    check_sequence_parallel(type(model), model.blocks[0].attn_temp.num_heads if getattr(model, "temporal", False) else 0,
                            [s // p for s, p in zip(model.input_size, model.patch_size)], n)
    split = dict(dim=1)  # 1: frames, 2: spatial tokens of x (B, T, S, C)

    def split_tokens(x, tpe):  # x (B, T, S, C), tpe (1, T, C) -> this rank's part of both
        T, S = x.shape[1:3]
        if T % n and S % n:
            raise ValueError(f"sequence parallel: neither {T} frame tokens nor {S} spatial tokens are divisible by "
                             f"sp_size {n}")
        split["dim"] = 1 if T % n == 0 else 2
        return split_sequence(x, split["dim"], group), split_sequence(tpe, 1, group) if split["dim"] == 1 else tpe

    def sharded(attend, dim):  # Ulysses when the tokens this attention mixes are split, else the plain call
        parallel_attend = ulysses(attend, group)
        return lambda q, k, v: parallel_attend(q, k, v) if split["dim"] == dim else attend(q, k, v)

    model.split_tokens = split_tokens
    model.gather_tokens = lambda x: gather_sequence(x, split["dim"], group)
    for block in model.blocks:
        block.attn_temp.attend = sharded(block.attn_temp.attend, 1)
        block.attn.attend = sharded(block.attn.attend, 2)
    return model
