"""A web demo: prompt to video in the browser, on sample.py's code path.

    python app.py                                      # the quick start's model (outputs/shapes) at 127.0.0.1:7860
    python app.py configs/opensora/inference/16x512x512.py --ckpt OpenSora-v1-HQ-16x512x512.pth --port 7861
    python app.py --listen                             # all interfaces: anyone who reaches the port uses the GPU
The config, --ckpt, --save_dir and --key=value overrides are checked as sample.py checks them (sample.configure: the
same one line, before the server starts), and the models are built once, by sample.build. Each request runs
sample.generate under inference mode with sample.py's staged memory (T5 on the GPU while it encodes, if it fits, then
back on the CPU; the VAE one video at a time), so the app needs what sample.py needs (bench.py row a512).
Safe by default: 127.0.0.1, no share link, analytics off; one generation at a time and at most --queue waiting (a
full queue answers "Queue is full" at once); prompts of at most 500 characters; uploads of at most 10 MB, in the
app's own temp folder (removed at exit); only that folder and save_dir are served. Stop (or a client that goes away)
ends the run at its next model call.
"""
import argparse
import asyncio
import os
import sys
import tempfile
import threading

TEMP = tempfile.TemporaryDirectory(prefix="nanosora-app-")  # uploads, gradio's copies of the outputs; gone at exit
os.environ.update(GRADIO_TEMP_DIR=TEMP.name, GRADIO_ANALYTICS_ENABLED="False")  # (gradio reads them at its import)

import gradio as gr  # noqa: E402
import torch  # noqa: E402

import parallel  # noqa: E402
import sample  # noqa: E402
from checkpoints import checkpoint_files  # noqa: E402
from errors import BadInput, one_line, one_line_errors  # noqa: E402

MAX_PROMPT = 500


def parse(argv):
    """--port, --listen, --queue; the rest is sample.py's command line (a config, --ckpt, --save_dir, overrides),
    parsed and checked by sample.py's own functions. No config: the quick start's demo model."""
    parser = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true")
    parser.add_argument("--queue", type=int, default=8, help="requests waiting at most (then: busy)")
    try:
        mine, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise BadInput(f"app.py {e}") from e
    args, overrides = sample.parse_args(rest)
    if args.prompts or args.prompt or args.prompt_path or args.from_json:
        raise BadInput("app.py takes no prompts nor --from_json: type the prompt in the page")
    if args.config is None and not args.ckpt and not checkpoint_files("outputs/shapes"):  # configs/shapes.py's ckpt
        raise BadInput("no trained demo model in outputs/shapes/: run the quick start first (python train.py "
                       "configs/shapes.py), or give a config and --ckpt")
    args.config = args.config or os.path.join(sample.HERE, "configs/shapes.py")
    mine.cfg = sample.configure(args, overrides)[0]
    return mine


def generate(cfg, models, prompt, seed, sampler, steps, guidance):
    """One request -> the video's path: its inputs checked, then sample.generate with T5 placed as sample.py places
    it and moved back to the CPU after encoding (the next request needs it)."""
    model, vae, text_encoder, device, dtype, meta = models
    prompt, low = (prompt or "").strip(), 2 if sampler == "dpm-solver" else 1  # (DPM-Solver's order 2 needs 2)
    if not 0 < len(prompt) <= MAX_PROMPT or None in (seed, steps, guidance) or steps < low or guidance < 0:
        raise BadInput(f"prompt of {len(prompt)} characters, seed {seed}, steps {steps}, guidance {guidance}: give a "
                       f"prompt of 1 to {MAX_PROMPT} characters, a seed, steps >= {low} and guidance >= 0")
    key = "sample_scheduler" if cfg["sample_scheduler"] else "scheduler"
    cfg = dict(cfg, **{key: dict(cfg[key] if cfg[key]["type"] == sampler else dict(type=sampler),
                                 num_sampling_steps=int(steps), cfg_scale=float(guidance))})
    sample.place_text_encoder(text_encoder, device)
    return sample.generate(cfg, model, vae, text_encoder, [prompt], [int(seed)], cfg["save_dir"], device, dtype,
                           meta, free_text_encoder="cpu")[0]


def build(args):
    """The models, built once as sample.py builds them, and the page on them: -> gr.Blocks with its bounded queue."""
    cfg, ctx = args.cfg, parallel.setup(1)
    model, vae, text_encoder, dtype, meta = sample.build(cfg, ctx)
    models, lock, results = (model, vae, text_encoder, ctx.device, dtype, meta), threading.Lock(), []
    running = [threading.Event()]  # the running request's stop flag

    def check_stop(*_):  # before every model call: a cancelled request ends here
        if running[0].is_set():
            raise InterruptedError("stopped")
    model.register_forward_pre_hook(check_stop)

    def work(stop, *inputs):
        with lock, torch.inference_mode():  # one generation at a time, also after a cancelled one's thread
            running[0] = stop
            results.insert(0, generate(cfg, models, *inputs))
            return results[0], os.path.splitext(results[0])[0] + ".json", list(results)

    async def on_generate(prompt, seed, sampler, steps, guidance, progress=gr.Progress(track_tqdm=True)):
        stop = threading.Event()
        try:  # in a thread, so that Stop or a lost client (the task cancelled) reaches the sampler
            return await asyncio.to_thread(work, stop, prompt, seed, sampler, steps, guidance)
        except asyncio.CancelledError:
            stop.set()
            raise
        except (BadInput, OSError) as e:
            raise gr.Error(one_line(e), print_exception=False) from e

    sched = cfg["sample_scheduler"] or cfg["scheduler"]
    examples = cfg["eval_prompts"] or ([cfg["prompt"]] if isinstance(cfg["prompt"], str) else cfg["prompt"] or [])
    with gr.Blocks(title="nanoSora", analytics_enabled=False) as demo:
        gr.Markdown(f"## nanoSora: {cfg['model']['type']}, {cfg['num_frames']} frames {cfg['image_size']}, "
                    f"`{os.path.basename(meta['weights']['path'])}`")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=MAX_PROMPT)
                seed = gr.Number(cfg["seed"], label="Seed", precision=0)
                sampler = gr.Dropdown(["dpm-solver", "iddpm"], value=sched["type"], label="Sampler")
                steps = gr.Slider(1, 200, sched.get("num_sampling_steps") or 20, step=1, label="Steps")
                guidance = gr.Slider(0, 10, sched.get("cfg_scale", 4.0), step=0.1, label="Guidance")
                with gr.Row():
                    go, stop = gr.Button("Generate", variant="primary"), gr.Button("Stop")
                gr.Examples([[p] for p in examples], prompt)
            with gr.Column():
                video, sidecar = gr.Video(label="Video", autoplay=True, loop=True), gr.File(label="Sidecar (JSON)")
        gallery = gr.Gallery(label="Earlier results of this server", columns=6, height=260)
        run = go.click(on_generate, [prompt, seed, sampler, steps, guidance], [video, sidecar, gallery],
                       api_name="generate", concurrency_limit=1)
        stop.click(None, cancels=[run])
    return demo.queue(max_size=args.queue, default_concurrency_limit=1)


def serve(args, block=True):
    """build(args), then launch it: 127.0.0.1 (--listen: every interface, with a warning), no share link."""
    demo = build(args)
    if args.listen:
        print("warning: --listen: serving on every interface, to anyone who can reach this port", file=sys.stderr)
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=False,
                allowed_paths=[os.path.abspath(args.cfg["save_dir"]), TEMP.name], max_file_size="10mb",
                prevent_thread_lock=not block)
    return demo


if __name__ == "__main__":
    sys.excepthook = one_line_errors  # a bad config or checkpoint: sample.py's one line, before the server starts
    serve(parse(sys.argv[1:]))
