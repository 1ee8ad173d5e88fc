# Open-Sora v1.0's STDiT-XL/2 training recipe at 64x512: the short name of configs/opensora/train/64x512x512.py
# (v1.0's file name; the same values, a test loads both).
# torchrun --nproc_per_node 8 train.py configs/64x512.py --data_path=train.csv
num_frames = 64
frame_interval = 2
image_size = (512, 512)

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
    space_scale=1.0,
    time_scale=2 / 3,
    from_pretrained=None,
    enable_flashattn=True,
    enable_layernorm_kernel=True,
)
vae = dict(
    type="VideoAutoencoderKL",
    from_pretrained="stabilityai/sd-vae-ft-ema",
    micro_batch_size=64,
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
ckpt_every = 250
load = None
batch_size = 4
lr = 2e-5
grad_clip = 1.0
