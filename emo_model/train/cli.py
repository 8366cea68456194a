"""`python -m emo_model train ...`: the training verb, registered by `add_train_parser` (one call in emo_model/cli.py).

Under `accelerate launch [--multi_gpu --num_processes N ...] -m emo_model train ...` the same command trains on
several GPUs or machines (docs/training.md)."""
import argparse


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help="train one EMO stage (1 image, 2 video + audio, 3 speed), or a LoRA")
    t.add_argument("--stage", type=int, required=True, choices=[1, 2, 3])
    t.add_argument("--data", required=True, help="a folder written by prepare-data")
    t.add_argument("--init", required=True,
                   help="the model to start from: the previous stage's RUN/model, a native/Hallo/EchoMimic model; "
                        "stage 1 also: an SD1.5 UNet folder, or 'tiny' (toy size, for tests)")
    t.add_argument("--out", required=True, help="the run folder (checkpoints/, logs/, model/ or lora.safetensors)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch", type=int, help="samples per process (default: stage 1 4, stages 2-3 1)")
    t.add_argument("--frames", type=int, help="target frames per sample (stages 2-3; EMO 12)")
    t.add_argument("--motion-frames", type=int, help="motion frames before them (stages 2-3; EMO 4)")
    t.add_argument("--resolution", type=int, help="pixels (default: the data's)")
    t.add_argument("--lr", type=float, default=1e-5)
    t.add_argument("--save-every", type=int, default=500, help="checkpoint every K steps")
    t.add_argument("--resume", help="'latest' (or a checkpoint folder): continue a stopped run in --out")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lora", type=int, metavar="RANK", help="train LoRA adapters of this rank instead of the weights")
    t.add_argument("--motion-module", help="stage 2: AnimateDiff v2 motion-module file for the temporal modules")
    t.add_argument("--vae", help="VAE folder/file when --init has none (SD1.5 UNet, tiny); with --init tiny also "
                                 "'tiny': train a tiny VAE on DATA's frames first (the learning check's)")
    t.add_argument("--audio-encoder", help="wav2vec2-base-960h folder when --init has none")
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"],
                   help="default: what `accelerate launch --mixed_precision` / `accelerate config` says, else no")
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer in the backward pass instead of keeping its activations: a 512² "
                        "stage-2 run needs a fraction of the memory for about 1.3x the step time (docs/training.md)")
    t.add_argument("--speed-cfg", type=float,
                   help="stage 3: the speed guidance the trained model samples with by default (its config; render "
                        "--speed-cfg and the sampler's speed_cfg override it). 1 = none, EMO's sampler; default "
                        "4.0, which the learning check's small models need to show the speed")
    t.add_argument("--balance-speed", action=argparse.BooleanOptionalAction,
                   help="draw the videos evenly over head speed (default: stage 3 yes, stage 2 no; footage of mostly "
                        "still heads teaches stage 2 to keep the reference's pose)")
    t.add_argument("--device", choices=["auto", "cpu"], default="auto")
    t.set_defaults(func=cmd_train)


def cmd_train(a) -> int:
    from .trainer import run_stage
    opts = {k: getattr(a, k) for k in ("batch", "frames", "motion_frames", "resolution", "lr", "save_every", "resume",
                                       "seed", "lora", "motion_module", "vae", "audio_encoder", "mixed_precision",
                                       "gradient_checkpointing", "device")}
    if a.speed_cfg is not None:
        opts["speed_cfg"] = a.speed_cfg
    if a.balance_speed is not None:
        opts["balance_speed"] = a.balance_speed
    r = run_stage(a.stage, a.data, a.init, a.out, a.steps, **opts)
    if r["model"] or r["lora"]:
        print(f"wrote {r['model'] or r['lora']}")
    return 0



