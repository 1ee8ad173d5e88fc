# The held-out colour proof, step 2 (docs/lora.md): rank-4 LoRA adapters on step 1's frozen model, trained on the
# yellow clips only (128 of the 512).
#   grep yellow data/shapes/train.csv > data/shapes/yellow.csv
#   python train.py configs/lora/shapes_yellow.py                    # -> outputs/shapes_yellow/lora
import os

exec(open(os.path.join(os.path.dirname(__file__), "shapes_no_yellow.py")).read())  # step 1's settings, except:
data_path = "data/shapes/yellow.csv"
cache_dir = "data/shapes/cache_yellow"
model = dict(model, from_pretrained="outputs/shapes_no_yellow")  # the base, frozen
lora = dict(r=4, alpha=4, dropout=0.0, target_modules=None)  # the blocks' linears (lora.TARGETS)
max_steps = 600
ckpt_every = 300
