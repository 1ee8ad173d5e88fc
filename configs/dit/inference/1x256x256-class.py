# Sampling ImageNet classes with Meta's released DiT-XL/2 256x256 (fetched on first use); prompts are class
# ids 0-999, one PNG each (v1.0's configs/dit/inference/1x256x256-class.py, same values).
# python sample.py --config configs/dit/inference/1x256x256-class.py 207 360 387
num_frames = 1
fps = 1
image_size = (256, 256)

model = dict(
    type="DiT-XL/2",
    no_temporal_pos_emb=True,
    condition="label_1000",
    from_pretrained="DiT-XL-2-256x256.pt",
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
)
text_encoder = dict(
    type="classes",
    num_classes=1000,
)
scheduler = dict(
    type="dpm-solver",
    num_sampling_steps=20,
    cfg_scale=4.0,
)
dtype = "fp16"

batch_size = 2
seed = 42
prompt_path = "configs/prompts/imagenet_ids.txt"
save_dir = "samples"
