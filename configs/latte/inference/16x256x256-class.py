# Sampling UCF-101 classes with Latte's released UCF-101 model (fetched on first use); prompts are class
# ids 0-100 (v1.0's configs/latte/inference/16x256x256-class.py, same values).
# python sample.py --config configs/latte/inference/16x256x256-class.py 0 2 10
num_frames = 16
fps = 8
image_size = (256, 256)

model = dict(
    type="Latte-XL/2",
    condition="label_101",
    from_pretrained="Latte-XL-2-256x256-ucf101.pt",
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
)
text_encoder = dict(
    type="classes",
    num_classes=101,
)
scheduler = dict(
    type="dpm-solver",
    num_sampling_steps=20,
    cfg_scale=4.0,
)
dtype = "fp16"

batch_size = 2
seed = 42
prompt_path = "configs/prompts/ucf101_ids.txt"
save_dir = "samples"
