# The CPU demo: coloured shapes moving on black, 8 frames at 16x16, pixel space (identity VAE), a tiny STDiT and
# a tiny random T5 (ByT5 bytes). `python train.py configs/shapes.py` makes the data, trains, and samples.
# `python sample.py --config configs/shapes.py "a red circle moving right"` samples from the trained run.
num_frames = 8
frame_interval = 2  # the toy clips have 16 frames: 8 frames every 2 cover the whole motion
image_size = (16, 16)  # the 32x32 toy clips, downscaled

root = None
data_path = "data/shapes/train.csv"
make_shapes = 512  # written on first use: 16 clips of each of the 32 captions
cache_dir = "data/shapes/cache"  # pixels and caption embeddings encoded once
num_workers = 0

dtype = "fp32"
grad_checkpoint = False
plugin = "zero2"
sp_size = 1

# 4x4 patches of 16x16 frames: 16 tokens a frame, 128 a clip, 0.3 s a step of 32 clips on 2 cores. (8x8 patches of
# 32x32 frames are as fast but a patch's 192 noise values do not fit through 128 channels: the samples stayed noise.)
model = dict(type="STDiT", depth=4, hidden_size=128, num_heads=4, patch_size=(1, 4, 4), class_dropout_prob=0.1)
vae = dict(type="identity")
# 512 channels, not fewer: the caption projection is initialised (as v1.0) for T5-XXL's 4096 channels, and with 64 the
# captions reached the model ~100x weaker than the image; after 1500 steps its output moved 0.2% between captions.
text_encoder = dict(type="t5", from_pretrained=None, model_max_length=32,
                    config=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=2, num_heads=8), seed=0)
scheduler = dict(type="iddpm", timestep_respacing="")
sample_scheduler = dict(type="dpm-solver", num_sampling_steps=20, cfg_scale=4.0)

seed = 42
outputs = "outputs"
epochs = 1000
max_steps = 1500
log_every = 10
ckpt_every = 500
load = None
batch_size = 32
lr = 1e-3
grad_clip = 1.0
ema_decay = 0.99

# sampling (sample.py and the end of train.py)
ckpt = "outputs/shapes"
save_dir = "samples/shapes"
fps = 8
eval_prompts = ["a red circle moving right", "a blue square moving up", "a green circle moving left",
                "a yellow square moving down"]
