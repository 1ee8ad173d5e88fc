# Sampling 1920x512 images with PixArt-alpha's released multi-scale 1024px model (fetched on first use):
# the image size and aspect ratio condition the model (multi_resolution) (v1.0's configs/pixart/inference/1x1024MS.py, same values).
# python sample.py --config configs/pixart/inference/1x1024MS.py "a prompt"
num_frames = 1
fps = 1
image_size = (1920, 512)
multi_resolution = True

model = dict(
    type="PixArtMS-XL/2",
    space_scale=2.0,
    time_scale=1.0,
    no_temporal_pos_emb=True,
    from_pretrained="PixArt-XL-2-1024-MS.pth",
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
prompt_path = "configs/prompts/t2i.txt"
save_dir = "samples"
