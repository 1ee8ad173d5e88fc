# Sampling a text-conditioned Latte-XL/2 at 16x256 (none is published: train one, then --ckpt) (v1.0's configs/latte/inference/16x256x256.py, same values).
# python sample.py --config configs/latte/inference/16x256x256.py --ckpt outputs/16x256x256
num_frames = 16
fps = 8
image_size = (256, 256)

model = dict(
    type="Latte-XL/2",
    condition="text",
    from_pretrained=None,
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
)
text_encoder = dict(
    type="clip",
    from_pretrained="openai/clip-vit-base-patch32",
    model_max_length=77,
)
scheduler = dict(
    type="dpm-solver",
    num_sampling_steps=20,
    cfg_scale=4.0,
)
dtype = "fp16"

batch_size = 2
seed = 42
prompt_path = "configs/prompts/ucf101_labels.txt"
save_dir = "samples"
