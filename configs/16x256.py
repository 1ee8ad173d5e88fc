# Open-Sora v1.0's STDiT-XL/2 training recipe at 16x256: the short name of configs/opensora/train/16x256x256.py
# (v1.0's file name; the same values, a test loads both).
# torchrun --nproc_per_node 8 train.py configs/16x256.py --data_path=train.csv
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
grad_checkpoint = True
plugin = "zero2"
sp_size = 1

model = dict(
    type="STDiT-XL/2",
    space_scale=0.5,
    time_scale=1.0,
    from_pretrained="PixArt-XL-2-512x512.pth",
    enable_flashattn=True,
    enable_layernorm_kernel=True,
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
)
text_encoder = dict(
    type="t5",
    from_pretrained="DeepFloyd/t5-v1_1-xxl",
    model_max_length=120,
    shardformer=True,
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
