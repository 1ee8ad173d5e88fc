# DiT-XL/2 on 256x256 images (one frame, no temporal table) with pooled CLIP captions (v1.0's configs/dit/train/1x256x256.py, same values).
# torchrun --nproc_per_node 8 train.py configs/dit/train/1x256x256.py --data_path=images.csv
num_frames = 1
frame_interval = 1
image_size = (256, 256)

# data: a CSV of path,caption rows (see README "Training")
root = None
data_path = "CSV_PATH"
use_image_transform = True
num_workers = 4

# acceleration
dtype = "bf16"
grad_checkpoint = False
plugin = "zero2"
sp_size = 1

model = dict(
    type="DiT-XL/2",
    no_temporal_pos_emb=True,
    enable_flashattn=True,
    enable_layernorm_kernel=True,
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
    type="iddpm",
    timestep_respacing="",
)

seed = 42
outputs = "outputs"
wandb = False
epochs = 1000
log_every = 10
ckpt_every = 1000
load = None
batch_size = 128
lr = 1e-4  # DiT's own image recipe
grad_clip = 1.0
