# Sampling with Open-Sora v1.0's released 16x256 STDiT-XL/2 weights (fetched on first use) (v1.0's configs/opensora/inference/16x256x256.py, same values).
# python sample.py --config configs/opensora/inference/16x256x256.py "a prompt"
num_frames = 16
fps = 24 // 3
image_size = (256, 256)

model = dict(
    type="STDiT-XL/2",
    space_scale=0.5,
    time_scale=1.0,
    enable_flashattn=True,
    enable_layernorm_kernel=True,
    from_pretrained="OpenSora-v1-HQ-16x256x256.pth",
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
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

batch_size = 2
seed = 42
prompt_path = "configs/prompts/t2v.txt"
save_dir = "samples"
