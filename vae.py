"""The frozen video autoencoders: pixels (B, 3, T, H, W) in [-1, 1] <-> latents (B, C, T, h, w).

Open-Sora v1.0 has no video VAE: it runs Stable Diffusion's image VAE on every frame independently
(`VideoAutoencoderKL`, 8x spatial down-sampling, 4 latent channels, no temporal compression), or Stable Video
Diffusion's, whose decoder also mixes frames (`VideoAutoencoderKLTemporalDecoder`). `IdentityVAE` keeps pixel space;
the CPU demo (configs/shapes.py) uses it.

    vae = build_vae(dict(type="VideoAutoencoderKL", from_pretrained="stabilityai/sd-vae-ft-ema"), device, dtype)
    z = vae.encode(x)   # (B, 3, T, H, W) -> (B, 4, T, H/8, W/8)
    x = vae.decode(z)   # and back
"""
import inspect

import torch
import torch.nn as nn

from errors import pick

# Stable Diffusion's latent scale: makes the latents roughly unit-variance. v1.0 hard-codes it rather than
# reading the checkpoint's config, and so do we (the SD VAEs all say 0.18215).
SCALE = 0.18215
SD_BLOCKS = dict(block_out_channels=(128, 256, 512, 512))  # stabilityai/sd-vae-ft-ema's encoder: 8x down-sampling


def latent_size(input_size, patch_size):
    """(T, H, W) pixels -> (T, H, W) latents; every dim must divide exactly (v1.0 asserts the same)."""
    if len(input_size) != 3 or any(n % p for n, p in zip(input_size, patch_size)):
        raise ValueError(f"input size {tuple(input_size)} (T, H, W) is not divisible by the VAE's down-sampling "
                         f"factors {tuple(patch_size)}")
    return [n // p for n, p in zip(input_size, patch_size)]


# ----------------------------------------------------------------------------- image VAE, frame by frame
class VideoAutoencoderKL(nn.Module):
    module_class = "AutoencoderKL"  # in diffusers.models
    """diffusers' AutoencoderKL on each frame. `micro_batch_size` frames go through it at a time (None: all frames
    of the batch at once) so that a 64-frame 512px clip does not need all its activations in memory together.

    from_pretrained=None builds a random-weight VAE from `config` (AutoencoderKL keyword arguments) for tests,
    deterministically from `seed`. Its spatial factor is 2 ** (len(block_out_channels) - 1): each encoder block but
    the last halves H and W. E.g. config=dict(block_out_channels=(32, 32), norm_num_groups=8) down-samples by 2,
    SD's (128, 256, 512, 512) by 8. down/up_block_types default to plain encoder/decoder blocks, one per entry.
    """

    def __init__(self, from_pretrained="stabilityai/sd-vae-ft-ema", micro_batch_size=None, config=None,
                 dtype=torch.float32, device=None, seed=0):
        super().__init__()
        import diffusers.models  # here: diffusers is slow to import, IdentityVAE does without
        module_class = getattr(diffusers.models, self.module_class)

        if from_pretrained is not None:
            try:
                self.module = module_class.from_pretrained(from_pretrained)
            except OSError as e:
                raise OSError(f"could not load the VAE '{from_pretrained}': download it first "
                              f"(huggingface-cli download {from_pretrained}) or set vae.from_pretrained to a local "
                              f"diffusers folder ({e})") from e
        elif config is None:
            raise ValueError("VideoAutoencoderKL: give from_pretrained (a hub id or folder) or a config dict")
        else:
            n = len(config.get("block_out_channels", (64,)))
            blocks = dict(down_block_types=("DownEncoderBlock2D",) * n)
            if "up_block_types" in inspect.signature(module_class).parameters:  # the temporal decoder has fixed ones
                blocks["up_block_types"] = ("UpDecoderBlock2D",) * n
            # A private RNG: train.py and sample.py must build the same random VAE, and building it must not
            # shift the global RNG that drives the model's own initialisation.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.module = module_class(**(blocks | config))
        # Frozen, and cast whole as v1.0 does (`vae.to(device, dtype)`). nn.Module.to, not diffusers' override: that one
        # warns about modules to keep in float32 even when the list is empty, as it is for AutoencoderKL.
        nn.Module.to(self.module, device, dtype).eval().requires_grad_(False)
        self.micro_batch_size, self.out_channels = micro_batch_size, self.module.config.latent_channels
        self.patch_size = self.down_sampling(self.module.config)  # v1.0 writes (1, 8, 8): the SD VAE's factor

    @staticmethod
    def down_sampling(config=None):
        """(T, H, W) pixels per latent of a VAE with this `config` (None: the released SD VAE's): each encoder block
        but the last halves H and W (what config.validate checks the sizes against, before any VAE loads)."""
        factor = 2 ** (len((config or SD_BLOCKS).get("block_out_channels", (64,))) - 1)
        return (1, factor, factor)

    def get_latent_size(self, input_size):
        return latent_size(input_size, self.patch_size)

    def compile_encoder(self):
        """torch.compile the encoder: its GroupNorm + SiLU between the convolutions fuse (train.py on CUDA)."""
        self.module.encoder.compile()

    def frames(self, fn, x, whole=1):
        """Apply fn to every frame of x (B, C, T, H, W), micro_batch_size frames at a time (a multiple of `whole`)."""
        B, C, T, H, W = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)  # frames in (B, T) order, as v1.0's "(B T) C H W"
        bs = max(whole, (self.micro_batch_size or len(x)) // whole * whole)
        x = torch.cat([fn(x[i:i + bs]) for i in range(0, len(x), bs)])  # (B*T, C', h, w)
        return x.reshape(B, T, *x.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C', T, h, w)

    def encoded(self, x, take):
        """take(the posterior of each frame) * SCALE for every frame of x (B, 3, T, H, W) -> (B, C', T, H/f, W/f)."""
        return self.frames(lambda frames: take(self.module.encode(frames).latent_dist) * SCALE, x)

    @torch.no_grad()
    def encode(self, x, sample=True):
        """(B, 3, T, H, W) in [-1, 1] -> (B, C, T, H/f, W/f). v1.0 draws a sample of the posterior (global RNG);
        sample=False returns its mean, deterministic (tests, latent caches)."""
        return self.encoded(x, lambda dist: dist.sample() if sample else dist.mean)

    @torch.no_grad()
    def posterior(self, x):
        """(B, 3, T, H, W) -> the posterior's mean and std, each (B, C, T, H/f, W/f) on encode's scale (the cache)."""
        return self.encoded(x, lambda dist: torch.cat([dist.mean, dist.std], 1)).chunk(2, 1)

    @torch.no_grad()
    def decode(self, z):
        """(B, C, T, h, w) -> (B, 3, T, h*f, w*f), roughly in [-1, 1] (not clamped)."""
        return self.frames(lambda frames: self.module.decode(frames / SCALE).sample, z)


class VideoAutoencoderKLTemporalDecoder(VideoAutoencoderKL):
    """Stable Video Diffusion's VAE (diffusers' AutoencoderKLTemporalDecoder; from_pretrained: a folder holding it, as
    the vae/ folder of stabilityai/stable-video-diffusion-img2vid): SD's per-frame encoder, and a decoder that also
    mixes the frames of each clip, so micro batches hold whole clips. v1.0 raises on encode; here it encodes frame by
    frame like the SD VAE."""
    module_class = "AutoencoderKLTemporalDecoder"

    @torch.no_grad()
    def decode(self, z):
        T = z.shape[2]
        return self.frames(lambda frames: self.module.decode(frames / SCALE, num_frames=T).sample, z, whole=T)


# ----------------------------------------------------------------------------- pixel space
class IdentityVAE(nn.Module):
    """No autoencoder: the diffusion model works on pixels (3 channels, no down-sampling), multiplied by `scale`.

    scale plays SD's 0.18215 the other way round: it brings the data to about unit variance. Mostly-black toy clips
    vary ~0.26 around -0.95, so at scale 1 the noise drowns them 15x sooner than the schedule assumes."""
    out_channels = 3
    patch_size = (1, 1, 1)

    @staticmethod
    def down_sampling(config=None):
        return IdentityVAE.patch_size

    def __init__(self, scale=1.0, dtype=None, device=None):  # dtype, device: build_vae passes them to every VAE
        super().__init__()
        self.scale = scale

    get_latent_size = VideoAutoencoderKL.get_latent_size

    def compile_encoder(self):  # nothing to compile
        pass

    def encode(self, x, sample=True):
        return x * self.scale

    def posterior(self, x):
        return x * self.scale, torch.zeros_like(x)

    def decode(self, z):
        return z / self.scale


# ----------------------------------------------------------------------------- config `vae = dict(type=...)`
VAES = {"VideoAutoencoderKL": VideoAutoencoderKL, "VideoAutoencoderKLTemporalDecoder": VideoAutoencoderKLTemporalDecoder,
        "identity": IdentityVAE}


def build_vae(cfg, device=None, dtype=None):
    """cfg: dict with `type` (a key of VAES) and that class's keyword arguments; device/dtype override cfg's."""
    cls = pick(VAES, "vae", cfg)
    return cls(**{k: v for k, v in cfg.items() if k != "type"} | {k: v for k, v in dict(device=device, dtype=dtype).items()
                                                                  if v is not None})
