# The CPU demo for image-to-video and long videos (v1.1's mask strategy on STDiT): the toy shapes on a torus
# (shapes_wrap: a shape leaving one edge comes back at the other, so a clip can go on in a loop), 8 frames a clip, and
# patches of ONE frame (patch_size (1, 2, 2)), which frame masks need: the temporal attention alone must carry the
# motion. Training masks frames as v1.1 does (mask_ratios): half the clips text-only, the others with their first
# frame (image-to-video), their first quarter (extension, the loops) or a random frame given.
# Commands (train, image-to-video, 3 loops, text only) and what they gave: docs/toy.md ("Image-to-video and loops").
num_frames = 8
frame_interval = 2  # frames 0, 2, .., 14 of the 16-frame toy clips: the whole crossing
image_size = (8, 8)

root = None
data_path = "data/shapes_wrap/train.csv"  # made on first use
make_shapes = 512
shapes_wrap = True
cache_dir = "data/shapes_wrap/cache"
num_workers = 0

dtype = "fp32"
grad_checkpoint = False
plugin = "zero2"
sp_size = 1

model = dict(type="STDiT", depth=2, hidden_size=128, num_heads=4, patch_size=(1, 2, 2), class_dropout_prob=0.1)
vae = dict(type="identity", scale=4.0)
text_encoder = dict(type="t5", from_pretrained=None, model_max_length=32,
                    config=dict(d_model=512, d_kv=64, d_ff=1024, num_layers=2, num_heads=8), seed=0)
scheduler = dict(type="iddpm", timestep_respacing="5,10,20,60,100,100,60,20,10,5")
sample_scheduler = dict(type="iddpm", num_sampling_steps=50, cfg_scale=4.0)  # edit ratios need IDDPM
mask_ratios = {"mask_no": 0.5, "mask_image_head": 0.25, "mask_quarter_head": 0.15, "mask_image_random": 0.1}

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

ckpt = "outputs/shapes_mask"
save_dir = "samples/shapes_mask"
fps = 4
condition_frame_length = 2  # --loop: each loop starts from the last 2 frames of the one before
eval_prompts = ["a red circle moving right", "a blue square moving up"]
