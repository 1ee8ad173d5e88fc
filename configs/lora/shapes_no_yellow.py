# The held-out colour proof, step 1 (docs/lora.md): the CPU demo's model trained on its toy set minus the yellow clips.
#   python toy.py shapes data/shapes --num 512
#   grep -v yellow data/shapes/train.csv > data/shapes/no_yellow.csv
#   python train.py configs/lora/shapes_no_yellow.py                 # -> outputs/shapes_no_yellow
import os

exec(open(os.path.join(os.path.dirname(__file__), "..", "shapes.py")).read())  # the demo's settings, except:
data_path = "data/shapes/no_yellow.csv"
make_shapes = 0
cache_dir = "data/shapes/cache_no_yellow"
ckpt = "outputs/shapes_no_yellow"
eval_prompts = None
