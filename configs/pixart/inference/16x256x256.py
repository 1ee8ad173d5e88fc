# Sampling a video PixArt-XL/2 at 16x256 (none is published: train one, then --ckpt) (v1.0's configs/pixart/inference/16x256x256.py, same values).
# python sample.py --config configs/pixart/inference/16x256x256.py --ckpt outputs/16x256x256
num_frames = 16
fps = 8
image_size = (256, 256)

model = dict(
    type="PixArt-XL/2",
    space_scale=0.5,
    time_scale=1.0,
    from_pretrained=None,
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
    type="dpm-solver",
    num_sampling_steps=20,
    cfg_scale=7.0,
)
dtype = "fp16"

batch_size = 2
seed = 42
prompt_path = "configs/prompts/t2v.txt"
save_dir = "samples"
