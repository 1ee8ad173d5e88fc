# The CPU demo: coloured shapes crossing the frame on black, 4 frames of 8x8, pixel space (identity VAE), a tiny STDiT
# and a tiny random T5 (ByT5 bytes). `python train.py configs/shapes.py` makes the data, trains, and samples.
# `python sample.py --config configs/shapes.py "a red circle moving right"` samples from the trained run.
# Why each setting is what it is, with the runs that chose it: docs/toy.md ("How the demo's settings were chosen").
num_frames = 4
frame_interval = 5  # frames 0, 5, 10, 15 of the 16-frame toy clips: the whole crossing
image_size = (8, 8)  # the 32x32 toy clips, downscaled

root = None
data_path = "data/shapes/train.csv"
make_shapes = 512  # written on first use: 16 clips of each of the 32 captions
cache_dir = "data/shapes/cache"  # pixels and caption embeddings encoded once
num_workers = 0

dtype = "fp32"
grad_checkpoint = False
plugin = "zero2"
sp_size = 1

# Patches of all 4 frames x 2x2 pixels: each token holds its spot's whole clip, so a shape's direction is the order of
# the channels it lights up (with 1-frame patches only the temporal attention can carry it).
model = dict(type="STDiT", depth=2, hidden_size=128, num_heads=4, patch_size=(4, 2, 2), class_dropout_prob=0.1)
# Pixels x4: brings the mostly black clips to about unit variance, as SD's latent scale does.
vae = dict(type="identity", scale=4.0)
# 512 channels, not fewer: the caption projection is initialised (as v1.0) for T5-XXL's 4096 channels.
text_encoder = dict(type="t5", from_pretrained=None, model_max_length=32,
                    config=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=2, num_heads=8), seed=0)
# Train on the timesteps where the caption decides the picture: most of the 490 kept ones in t = 300..600.
scheduler = dict(type="iddpm", timestep_respacing="5,10,20,60,100,100,60,20,10,5")
sample_scheduler = dict(type="dpm-solver", num_sampling_steps=20, cfg_scale=4.0)

seed = 42
outputs = "outputs"
epochs = 1000
max_steps = 4000
log_every = 10
ckpt_every = 2000
load = None
batch_size = 32
lr = 1e-3
grad_clip = 1.0
ema_decay = 0.99

# sampling (sample.py and the end of train.py)
ckpt = "outputs/shapes"
save_dir = "samples/shapes"
fps = 4
eval_prompts = ["a red circle moving right", "a blue square moving up", "a green circle moving left",
                "a yellow square moving down"]
