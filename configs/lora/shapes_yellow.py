# The held-out colour proof, step 2 (docs/lora.md): rank-4 LoRA adapters on step 1's frozen model, trained on the
# 128 yellow clips and a replay of 128 clips of the other colours (yellow alone: the others are forgotten).
#   (grep yellow data/shapes/train.csv; grep -v yellow data/shapes/train.csv | awk 'NR%3==1') > data/shapes/yellow_replay.csv
#   python train.py configs/lora/shapes_yellow.py                    # -> outputs/shapes_yellow/lora
import os

exec(open(os.path.join(os.path.dirname(__file__), "shapes_no_yellow.py")).read())  # step 1's settings, except:
data_path = "data/shapes/yellow_replay.csv"
cache_dir = "data/shapes/cache_yellow_replay"
model = dict(model, from_pretrained="outputs/shapes_no_yellow")  # the base, frozen
lora = dict(r=4, alpha=4, dropout=0.0, target_modules=None)  # the blocks' linears (lora.TARGETS)
max_steps = 1200
ckpt_every = 600
