# DiT-XL/2, full attention over all 16x16x16 tokens, conditioned on pooled CLIP captions, started
# from Meta's class-conditional DiT-XL-2-256x256.pt (its class table is dropped, the caption MLP starts fresh) (v1.0's configs/dit/train/16x256x256.py, same values).
# torchrun --nproc_per_node 8 train.py configs/dit/train/16x256x256.py --data_path=train.csv
num_frames = 16
frame_interval = 3
image_size = (256, 256)

# data: a CSV of path,caption rows (see README "Training")
root = None
data_path = "CSV_PATH"
use_image_transform = False
num_workers = 4

# acceleration
dtype = "bf16"
grad_checkpoint = False
plugin = "zero2"
sp_size = 1

model = dict(
    type="DiT-XL/2",
    from_pretrained="DiT-XL-2-256x256.pt",
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
batch_size = 8
lr = 2e-5
grad_clip = 1.0
