# Sampling with Open-Sora v1.0's STDiT-XL/2 at 64x512 (no released weights: pass --ckpt) (v1.0's configs/opensora/inference/64x512x512.py, same values).
# python sample.py --config configs/opensora/inference/64x512x512.py "a prompt"
num_frames = 64
fps = 24 // 2
image_size = (512, 512)

model = dict(
    type="STDiT-XL/2",
    space_scale=1.0,
    time_scale=2 / 3,
    enable_flashattn=True,
    enable_layernorm_kernel=True,
    from_pretrained=None,
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
    micro_batch_size=128,
)
text_encoder = dict(
    type="t5",
    from_pretrained="DeepFloyd/t5-v1_1-xxl",
    model_max_length=120,
)
scheduler = dict(
    type="iddpm",
    num_sampling_steps=100,
    cfg_scale=7.0,
)
dtype = "fp16"

batch_size = 1
seed = 42
prompt_path = "configs/prompts/t2v.txt"
save_dir = "samples"
