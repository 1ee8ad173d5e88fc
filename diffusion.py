"""Diffusion: IDDPM for training and ancestral sampling, DPM-Solver++ for fast sampling, as Open-Sora v1.0 runs them.

    scheduler = build_scheduler(dict(type="iddpm", num_sampling_steps=100, cfg_scale=7.0))
    loss = scheduler.training_losses(model, x0, t, dict(y=y, mask=mask))["loss"]       # (B,)
    z = scheduler.sample(model, text_encoder, (C, T, H, W), prompts, device)           # (n, C, T, H, W)

Only what v1.0's configs reach is here: 1000 linear betas, the model predicts the noise (first C output channels)
and a learned-range variance (last C), loss = MSE + VB, respacing for sampling; DPM-Solver++ multistep, order 2,
time-uniform grid, classifier-free guidance. Every number matches the original to float32 rounding
(shared/fixtures/iddpm_ref.pt, dpms_ref.pt, stdit_pipeline_ref.pt); each quirk we keep on purpose says so.
"""
import math
from functools import partial
from itertools import accumulate

import numpy as np
import torch
from tqdm import tqdm

from errors import BadInput, pick

# ---------------------------------------------------------------------------------------------------------------
# Noise schedule and respacing (float64 numpy, as the original: a coefficient is cast to float32 per use)
# ---------------------------------------------------------------------------------------------------------------


def linear_betas(num_steps):
    scale = 1000 / num_steps  # Ho et al.'s 1e-4..0.02 for 1000 steps, stretched for other step counts
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def space_timesteps(num_steps, respacing):
    """Sorted original timesteps kept by `respacing`: "" / None (all), "10", "10,20" (per section), "ddim10"."""
    if respacing in (None, ""):
        return list(range(num_steps))
    if isinstance(respacing, str) and respacing.startswith("ddim"):
        count = int(respacing[len("ddim"):])
        # DDIM's fixed integer stride
        stride = next((s for s in range(1, num_steps) if len(range(0, num_steps, s)) == count), None)
        if stride is None:
            raise ValueError(f"timestep_respacing='{respacing}': no integer stride gives {count} of {num_steps} steps")
        return list(range(0, num_steps, stride))
    counts = [int(c) for c in respacing.split(",")] if isinstance(respacing, str) else [int(c) for c in respacing]
    kept, start = [], 0
    for i, count in enumerate(counts):  # the steps are cut into len(counts) equal sections, the first ones 1 longer
        size = num_steps // len(counts) + (i < num_steps % len(counts))
        if not 0 <= count <= size:  # a section may keep no step at all, as in the original
            raise ValueError(f"timestep_respacing={respacing!r}: cannot take {count} steps from a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        # Quirk kept: a running float sum rounded with Python's round (half to even): 5 of 6 steps keeps
        # 0, 1, 2, 4, 5 (round(2.5) = 2); 6 of 1000 keeps 599 (599.4), (stdit_pipeline_ref.pt's timestep_map).
        kept += [start + round(pos) for pos in accumulate([stride] * count, initial=0.0)][:count]
        start += size
    return sorted(set(kept))


# ---------------------------------------------------------------------------------------------------------------
# Gaussian helpers (per-element; `mean_flat` averages all but the batch dim)
# ---------------------------------------------------------------------------------------------------------------


def mean_flat(x, mask=None):
    """x (B, C, T, ...) -> (B,); mask (B, T) bool: the mean over the True frames only (v1.1's masked loss)."""
    if mask is None:
        return x.mean(dim=list(range(1, x.ndim)))
    x = x.transpose(1, 2).flatten(2) * mask[..., None]  # (B, T, C*H*W), condition frames zeroed
    return x.sum((1, 2)) / (mask.sum(1) * x.shape[2])


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats, elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) for data quantised to 256 levels in [-1, 1] (DDPM's decoder); the outer bins extend to +-inf."""
    inv_std, log = torch.exp(-log_scale), lambda p: torch.log(p.clamp(min=1e-12))
    # the standard normal's CDF, tanh-approximated
    cdf = lambda v: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * torch.pow(v, 3))))  # noqa: E731
    cdf_plus, cdf_min = (cdf(inv_std * (x - mean + d)) for d in (1.0 / 255.0, -1.0 / 255.0))
    return torch.where(x < -0.999, log(cdf_plus), torch.where(x > 0.999, log(1.0 - cdf_min), log(cdf_plus - cdf_min)))


# ---------------------------------------------------------------------------------------------------------------
# IDDPM: epsilon prediction, learned-range variance, MSE + VB loss, respaced ancestral sampling
# ---------------------------------------------------------------------------------------------------------------


class IDDPM:
    def __init__(self, num_sampling_steps=None, timestep_respacing=None, noise_schedule="linear", use_kl=False,
                 sigma_small=False, predict_xstart=False, learn_sigma=True, rescale_learned_sigmas=False,
                 diffusion_steps=1000, cfg_scale=4.0, cfg_channel=3):
        # v1.0's keywords and defaults; the variants no v1.0 config reaches are refused, never silently ignored
        for key, value, supported in [("noise_schedule", noise_schedule, "linear"), ("use_kl", use_kl, False),
                                      ("sigma_small", sigma_small, False), ("predict_xstart", predict_xstart, False),
                                      ("learn_sigma", learn_sigma, True),
                                      ("rescale_learned_sigmas", rescale_learned_sigmas, False)]:
            if value != supported:
                raise ValueError(f"IDDPM: {key}={value!r} is not implemented, only {key}={supported!r} (v1.0's "
                                 "setting: linear schedule, epsilon prediction, learned-range sigma, MSE + VB loss)")
        if num_sampling_steps is not None:
            if timestep_respacing not in (None, ""):
                raise ValueError("IDDPM: give num_sampling_steps or timestep_respacing, not both")
            timestep_respacing = str(num_sampling_steps)
        # v1.0 guides channels 0..2 only (forward_with_cfg); v1.1's cfg_channel=None guides all C noise channels
        self.cfg_scale, self.cfg_channel = cfg_scale, cfg_channel
        self.timestep_map = space_timesteps(diffusion_steps, timestep_respacing)  # spaced index -> original t
        self.num_timesteps = len(self.timestep_map)

        # The spaced process keeps alpha_bar at the kept steps: beta'_i = 1 - abar[t_i] / abar[t_{i-1}].
        kept = np.cumprod(1.0 - linear_betas(diffusion_steps))[self.timestep_map]
        betas = 1.0 - kept / np.append(1.0, kept[:-1])
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        self.betas, self.alphas_cumprod = betas, abar
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = np.sqrt(abar), np.sqrt(1.0 - abar)  # noising
        self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar), np.sqrt(1.0 / abar - 1)
        # posterior q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, posterior_variance)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # its variance is 0 at t = 0; the log uses the t = 1 value there ("clipped")
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
        self.log_betas = np.log(betas)

    def _coef(self, table, t, x):
        """table[t] cast float64 -> float32 just before use (as the original), shaped (B, 1, ..., 1) against x."""
        return torch.from_numpy(table).to(t.device)[t].float().view(-1, *[1] * (x.ndim - 1))

    def _model(self, model, x, t, model_kwargs):
        """The model always sees the ORIGINAL timestep timestep_map[t] (dtype of t), never the spaced index."""
        out = model(x, torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)[t], **model_kwargs)
        if out.shape != (x.shape[0], 2 * x.shape[1], *x.shape[2:]):
            raise ValueError(f"IDDPM: model output {tuple(out.shape)} should be (B, 2C, ...) = noise and variance "
                             f"for x {tuple(x.shape)} (learn_sigma: the model needs pred_sigma=True)")
        return out

    def q_sample(self, x_start, t, noise):
        return self._coef(self.sqrt_alphas_cumprod, t, x_start) * x_start + \
            self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise

    def q_posterior_mean(self, x_start, x_t, t):
        return self._coef(self.posterior_mean_coef1, t, x_t) * x_start + \
            self._coef(self.posterior_mean_coef2, t, x_t) * x_t

    def _p_from_output(self, out, x, t, clip_denoised):
        eps, v = out.split(x.shape[1], dim=1)  # (B, C, ...) each
        # learned range: v in [-1, 1] interpolates log sigma^2 between the clipped posterior variance and beta_t
        frac = (v + 1) / 2
        min_log, max_log = self._coef(self.posterior_log_variance_clipped, t, x), self._coef(self.log_betas, t, x)
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = self._coef(self.sqrt_recip_alphas_cumprod, t, x) * x - \
            self._coef(self.sqrt_recipm1_alphas_cumprod, t, x) * eps
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        return dict(mean=self.q_posterior_mean(pred_xstart, x, t), variance=torch.exp(log_variance),
                    log_variance=log_variance, pred_xstart=pred_xstart)

    def p_mean_variance(self, model, x, t, clip_denoised=True, model_kwargs=None):
        """p(x_{t-1} | x_t) for spaced indices t (B,): dict(mean, variance, log_variance, pred_xstart), each like x.
        clip_denoised clamps pred_xstart to [-1, 1]: on by default as in v1.0 (pixel-space DDPM's habit), off in
        sample(), whose latents are not bounded."""
        return self._p_from_output(self._model(model, x, t, model_kwargs or {}), x, t, clip_denoised)

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None, mask=None):
        """dict(loss, mse, vb), each (B,). mse trains the noise; vb (bits/dim) trains only the variance. mask (B, T)
        bool, v1.1's: False frames are conditions, noised at t = 0 with the same noise and left out of the losses
        (train.py also hands the model mask as x_mask; iddpm_mask_ref.pt)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        if mask is not None:
            x_t = torch.where(mask[:, None, :, None, None], x_t, self.q_sample(x_start, torch.zeros_like(t), noise))
        out = self._model(model, x_t, t, model_kwargs or {})
        eps = out[:, :x_t.shape[1]]
        # VB with the noise prediction DETACHED, so that the KL term only trains the variance channels
        p = self._p_from_output(torch.cat([eps.detach(), out[:, x_t.shape[1]:]], dim=1), x_t, t, clip_denoised=False)
        true_mean = self.q_posterior_mean(x_start, x_t, t)
        true_log_var = self._coef(self.posterior_log_variance_clipped, t, x_t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]), mask)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"]), mask)
        vb = torch.where(t == 0, nll, kl) / math.log(2.0)  # in bits; at t = 0 the decoder NLL replaces the KL
        mse = mean_flat((noise - eps) ** 2, mask)
        return dict(loss=mse + vb, mse=mse, vb=vb)

    @torch.no_grad()
    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, model_kwargs=None, device=None,
                      progress=True, generators=None, mask=None):
        """Ancestral sampling from x_T = noise (or a fresh randn) down to x_0; returns x_0 of `shape`. generators:
        the step noise of each prompt from its own (randn below). mask (b, T) float, b dividing B, v1.1's frame mask
        (1 generate, 0 condition, in between: an edit ratio): frame values of noise are held while the step index
        is above int(mask * steps), re-noised at it, generated below it (iddpm_mask_ref.pt `sampling`)."""
        device = device or (noise.device if noise is not None else "cpu")
        x = noise if noise is not None else randn(shape, device, generators)
        for i in tqdm(range(self.num_timesteps)[::-1], disable=not progress):
            t = torch.tensor([i] * shape[0], device=device)  # (B,) int64
            if mask is not None:  # v1.1: one more draw per step, before the step's own (and float32 mask * N, cut)
                mask_t = (mask.repeat(shape[0] // len(mask), 1) * self.num_timesteps).int()[:, None, :, None, None]
                x0, x = x, torch.where(mask_t == i, self.q_sample(x, t, randn(x.shape, x.device, generators)), x)
                model_kwargs = dict(model_kwargs, x_mask=(mask_t > i)[:, 0, :, 0, 0])  # the re-noised: conditions
            p = self.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
            # Quirk kept: exactly one randn per step from the global generator (or each prompt's), also at i = 0
            # where it is unused (no noise into x_0), so a seed reproduces the original's samples (iddpm_ref.pt
            # `sample`).
            x = p["mean"] + float(i > 0) * torch.exp(0.5 * p["log_variance"]) * randn(x.shape, x.device, generators)
            x = x if mask is None else torch.where(mask_t < i, x0, x)  # frames still held
        return x

    def sample(self, model, text_encoder, z_size, prompts, device, additional_args=None, progress=True,
               generators=None, encoded=None, z=None, mask=None):
        """Text-to-video latents (n, C, T, H, W) with classifier-free guidance at self.cfg_scale. encoded: the text
        encoder's output for `prompts` if already computed (sample.py encodes first, then frees T5); generators: one
        per prompt (randn below), else the global generator as v1.0. z: the initial noise (n, C, T, H, W), else drawn
        here; mask (n, T): v1.1's frame mask (p_sample_loop), its condition frames' values written into z."""
        n = len(prompts)
        z = randn((n, *z_size), device, generators) if z is None else z  # the first draw after the caller's seed
        z = torch.cat([z, z], 0)  # (2n, ...): cond rows, then uncond rows
        # y=(n, 1, L, C), mask=(n, L), and additional_args (PixArtMS's data_info)
        model_args = dict(encoded or text_encoder.encode(prompts)) | (additional_args or {})
        model_args["y"] = torch.cat([model_args["y"], text_encoder.null(n)], 0)  # cond FIRST (DPM-Solver: uncond first)
        # The mask stays n rows: the model tiles it, so the null caption is masked with the prompt's mask too.
        forward = partial(forward_with_cfg, model, cfg_scale=self.cfg_scale, cfg_channel=self.cfg_channel)
        return self.p_sample_loop(forward, z.shape, z, clip_denoised=False, model_kwargs=model_args, device=device,
                                  progress=progress, generators=generators, mask=mask)[:n]


def parse_mask_strategy(text, num_refs=None, num_frames=None):
    """v1.1's mask strategy of one prompt: ';'-separated entries 'loop,ref_id,ref_start,target_start,length,edit_ratio'
    whose missing trailing fields are 0,0,0,1,0 ("0": loop 0, reference 0's frame 0 as frame 0) -> a list of tuples.
    With num_refs / num_frames (latent): a ref_id without a reference or frames outside the clip are BadInput."""
    entries = []
    for part in text.split(";") if text else []:
        fields = part.split(",")
        fields += "0,0,0,1,0".split(",")[len(fields) - 1:]  # v1.1's defaults of the missing trailing fields
        try:
            loop, ref_id, rs, ts, length, edit = *map(int, fields[:5]), float(fields[5])
            T = num_frames or abs(ts) + length  # (no clip size given: any target)
            ok = len(fields) == 6 and 0 <= edit <= 1 and length >= 1 and -T <= ts < T and ts % T + length <= T
        except ValueError:
            ok = False
        if not ok or num_refs is not None and not 0 <= ref_id < num_refs:
            raise BadInput(f"mask strategy {part!r}: give loop,ref_id,ref_start,target_start,length,edit_ratio (ints, "
                           f"the edit ratio in [0, 1]), a ref_id of the {num_refs} reference(s) and frames within the "
                           f"{num_frames} latent frames")
        entries.append((loop, ref_id, rs, ts, length, edit))
    return entries


def apply_mask_strategy(z, refs, strategies, loop_i=0):
    """v1.1's inference-long.py: z (n, C, T, H, W), refs[i] row i's reference latents (C, T_ref, H, W), strategies[i]
    its strategy string or None. Writes the entries of loop loop_i into z (negative starts count from the end) and
    returns the frame mask (n, T) float32: 1 generate, 0 condition, in between an edit ratio."""
    masks = torch.ones(z.shape[0], z.shape[2], device=z.device)
    for i, strategy in enumerate(strategies):
        for loop, ref_id, rs, ts, length, edit in parse_mask_strategy(strategy, num_frames=z.shape[2]):
            if loop != loop_i:
                continue
            T_ref = refs[i][ref_id].shape[1] if 0 <= ref_id < len(refs[i]) else 0
            rs, ts = rs + T_ref * (rs < 0), ts + z.shape[2] * (ts < 0)
            if not 0 <= rs <= rs + length <= T_ref:
                raise BadInput(f"mask strategy {strategy!r}: reference {ref_id} of prompt {i} is missing or shorter "
                               f"than frames {rs}..{rs + length - 1}")
            z[i, :, ts:ts + length], masks[i, ts:ts + length] = refs[i][ref_id][:, rs:rs + length], edit
    return masks


def randn(shape, device, generators=None):
    """Gaussian noise of `shape`. generators=None: the global generator, as v1.0 (one draw for the whole batch, so a
    video depends on its neighbours). Else one generator per prompt: the n prompts' rows i, n + i, .. (the guidance
    copies) come from generators[i] alone, so each video is the one its prompt and seed give in a batch of one."""
    if generators is None:
        return torch.randn(shape, device=device)
    rows = [torch.randn((shape[0] // len(generators), *shape[1:]), generator=g, device=device) for g in generators]
    return torch.stack(rows, 1).reshape(shape)  # (copies, n, ...) -> row c * n + i


def forward_with_cfg(model, x, timestep, y, cfg_scale, cfg_channel=3, **kwargs):
    """Classifier-free guidance in one model call: x (2n, ...) whose first half is used twice, y = [cond; uncond]."""
    half = x[:len(x) // 2]
    out = model(torch.cat([half, half], 0), timestep, y, **kwargs)  # (2n, 2C, T, H, W)
    # Quirk kept: only output CHANNELS 0..2 are guided, a hard-coded [:, :3] from DiT's RGB default. With 4 latent
    # channels the 4th noise channel and all variance channels pass through unguided, each half keeping its own
    # rows (iddpm_ref.pt `cfg`, stdit_pipeline_ref.pt `iddpm`). v1.1: cfg_channel, None = all C noise channels.
    cfg_channel = out.shape[1] // 2 if cfg_channel is None else cfg_channel
    eps, rest = out[:, :cfg_channel], out[:, cfg_channel:]
    cond, uncond = eps.split(len(eps) // 2, dim=0)
    guided = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([guided, guided], 0), rest], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, order <= 2, time-uniform grid) on the same 1000 linear betas
# ---------------------------------------------------------------------------------------------------------------


def vp_coefs(device, num_steps=1000):
    """coefs(t) -> alpha_t, sigma_t, lambda_t, each (1,), for continuous t (1,) in (0, 1]: log alpha of the discrete
    table placed at t_n = (n + 1) / N, linearly interpolated. alpha_t^2 = abar, sigma_t = sqrt(1 - alpha_t^2),
    lambda_t = log(alpha_t / sigma_t)."""
    betas = torch.tensor(linear_betas(num_steps))  # float64
    log_alpha = (0.5 * torch.log(1 - betas).cumsum(0)).float().to(device)  # float64 sums, then float32 as the original
    # (the original clips log-SNR at -5.1 near t = 1; it never triggers here: min lambda ~ -5.06)
    ts = torch.linspace(0.0, 1.0, num_steps + 1)[1:].to(device)  # float32

    def coefs(t):
        k = torch.searchsorted(ts, t).clamp(1, num_steps - 1)  # segment [k-1, k]; the end ones extrapolate
        la = log_alpha[k - 1] + (t - ts[k - 1]) * (log_alpha[k] - log_alpha[k - 1]) / (ts[k] - ts[k - 1])
        return torch.exp(la), torch.sqrt(1.0 - torch.exp(2.0 * la)), la - 0.5 * torch.log(1.0 - torch.exp(2.0 * la))
    return coefs


@torch.no_grad()
def dpm_solver_sample(model, z, y, y_null, cfg_scale, steps, order=2, model_kwargs=None, progress=True):
    """DPM-Solver++ from x_1 = z (B, C, T, H, W) to t = 1/1000; model(x, t, y, **model_kwargs) -> noise like x.

    `steps` model calls on the grid linspace(1, 0.001, steps + 1) (the last point gets no call). Guidance: one call
    on cat[x, x] with y = cat[y_null, y] (UNCONDITIONAL FIRST, the opposite of IDDPM) and eps guided on all channels.
    """
    if order not in (1, 2) or steps < order:
        raise ValueError(f"dpm_solver_sample: need order 1 or 2 and steps >= order, got order={order}, steps={steps}")
    model_kwargs = model_kwargs or {}
    coefs, N = vp_coefs(z.device), 1000
    grid = torch.linspace(1.0, 1.0 / N, steps + 1).to(z.device)  # float32, time-uniform

    def data_pred(x, t):  # x0 = (x - sigma_t * eps) / alpha_t, no thresholding
        # model time: (t - 1/N) * 1000 in float32, NOT rounded (999.0, 899.1, ...: dpms_ref.pt `model_timesteps`)
        t_in = ((t - 1.0 / N) * 1000.0).expand(len(x))
        if cfg_scale == 1.0 or y_null is None:  # as the original: no doubled batch, the condition only
            eps = model(x, t_in, y, **model_kwargs)
        else:
            eps_u, eps_c = model(torch.cat([x, x]), t_in.repeat(2), torch.cat([y_null, y]), **model_kwargs).chunk(2)
            eps = eps_u + cfg_scale * (eps_c - eps_u)
        alpha, sigma, _ = coefs(t)
        return (x - sigma * eps) / alpha

    x, prev_t, prev_x0 = z, [grid[0:1]], [data_pred(z, grid[0:1])]  # the last (at most) 2 times and data predictions
    for step in tqdm(range(1, steps + 1), disable=not progress):
        t = grid[step:step + 1]
        # The first step is first order (no history). Quirk kept: "lower_order_final" makes the LAST step first
        # order only when steps < 10 (dpms_ref.pt, 10 steps: second order to the end; the pipeline's 5: first).
        step_order = min(order, step, steps + 1 - step) if steps < 10 else min(order, step)
        alpha_t, sigma_t, lam_t = coefs(t)
        _, sigma_s, lam_s = coefs(prev_t[-1])
        h = lam_t - lam_s
        phi = torch.expm1(-h)
        x = sigma_t / sigma_s * x - alpha_t * phi * prev_x0[-1]  # first order
        if step_order == 2:  # multistep second order ("dpmsolver" midpoint form): D = (x0_prev0 - x0_prev1) / r0
            r0 = (lam_s - coefs(prev_t[-2])[2]) / h
            x = x - 0.5 * (alpha_t * phi) * ((1.0 / r0) * (prev_x0[-1] - prev_x0[-2]))
        if step < steps:  # no model call at the final time
            prev_t, prev_x0 = (prev_t + [t])[-2:], (prev_x0 + [data_pred(x, t)])[-2:]
    return x


# one text for both checks: here, and sample.read_conditions before any model loads
NO_EDIT_RATIOS = "dpm-solver: edit ratios (0 < edit_ratio < 1) need the iddpm sampler; conditions (0) work"


class DPMSolver:
    """The "dpm-solver" sampler: DPM-Solver++ multistep, order 2, time-uniform, on a model whose first C output
    channels are the noise (a learned-variance half, if any, is dropped)."""

    def __init__(self, num_sampling_steps=None, cfg_scale=4.0):
        # v1.0's default None crashes inside its solver; we use 20, DPM-Solver's own default and every v1.0 config's
        self.num_sampling_steps, self.cfg_scale = 20 if num_sampling_steps is None else num_sampling_steps, cfg_scale

    def sample(self, model, text_encoder, z_size, prompts, device, additional_args=None, progress=True,
               generators=None, encoded=None, z=None, mask=None):  # as IDDPM.sample
        n = len(prompts)
        z = randn((n, *z_size), device, generators) if z is None else z  # the first draw after the caller's seed
        if mask is not None and ((mask > 0) & (mask < 1)).any():
            raise BadInput(NO_EDIT_RATIOS)
        keep = None if mask is None else (mask == 0)[:, None, :, None, None]  # (n, 1, T, 1, 1)
        # y=(n, 1, L, C), mask=(n, L) (the model tiles it) and additional_args
        model_args = dict(encoded or text_encoder.encode(prompts)) | (additional_args or {})
        y = model_args.pop("y")

        def noise_model(x, t, y, **kwargs):  # (B, 2C, ...) -> the first C channels: the noise
            if keep is not None:  # our addition (v1.1 has no masked DPM-Solver): conditions reset, seen as such
                k = keep.repeat(len(x) // n, 1, 1, 1, 1)
                x, kwargs = torch.where(k, z.repeat(len(x) // n, 1, 1, 1, 1), x), dict(kwargs, x_mask=~k[:, 0, :, 0, 0])
            return model(x, t, y, **kwargs).chunk(2, dim=1)[0]

        x = dpm_solver_sample(noise_model, z, y, text_encoder.null(n), self.cfg_scale, self.num_sampling_steps,
                              order=2, model_kwargs=model_args, progress=progress)
        return x if keep is None else torch.where(keep, z, x)


# ---------------------------------------------------------------------------------------------------------------
# Building from a config dict
# ---------------------------------------------------------------------------------------------------------------

SCHEDULERS = {"iddpm": IDDPM, "dpm-solver": DPMSolver}


def build_scheduler(cfg):
    """cfg: dict(type="iddpm" | "dpm-solver", **keyword arguments of that class)."""
    return pick(SCHEDULERS, "scheduler", cfg)(**{k: v for k, v in cfg.items() if k != "type"})
