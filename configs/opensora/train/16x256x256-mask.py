# Open-Sora v1.1's recipe for image-to-video and long videos on v1.0's STDiT-XL/2: v1.0's HQ 16x256 weights trained on
# with half the clips given frames (v1.1's report: about 10k steps taught it, at a small text-to-video cost).
# torchrun --nproc_per_node 8 train.py configs/opensora/train/16x256x256-mask.py --data_path=train.csv
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
    from_pretrained="OpenSora-v1-HQ-16x256x256.pth",
    enable_flashattn=True,
    enable_layernorm_kernel=True,
)
# v1.1's nine frame-mask types (its own 16x256x256-mask.py used the older names mask_random, mask_head, mask_tail,
# mask_head_tail: accepted too, as the quarter types)
mask_ratios = {"mask_no": 0.5, "mask_quarter_random": 0.0625, "mask_quarter_head": 0.0625, "mask_quarter_tail": 0.0625,
               "mask_quarter_head_tail": 0.0625, "mask_image_random": 0.0625, "mask_image_head": 0.0625,
               "mask_image_tail": 0.0625, "mask_image_head_tail": 0.0625}
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
