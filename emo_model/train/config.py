"""TrainConfig: every setting of one training run (one EMO stage), stored as RUN/train_config.json.

Defaults follow EMO's paper where it states them (f = 12, n = 4, lr 1e-5) and Hallo's training code elsewhere
(docs/training.md): v-prediction on the sampler's own noise schedule, min-SNR weighting gamma 5,
offset noise 0.05, AdamW (0.9, 0.999, wd 1e-2), gradient clipping 1.0, conditioning dropout per step.
"""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import EMOInputError

# Stage -> (frames per clip f, motion frames n, batch per process, reference-dropout rate) when not given.
STAGE_DEFAULTS = {1: (1, 0, 4, 0.1), 2: (12, 4, 1, 0.05), 3: (12, 4, 1, 0.05)}
FIRST_CLIP = {1: 0.05, 2: 0.05, 3: 0.5}
# Speed guidance a stage-3 model samples with by default (its config's `speed_cfg`; sampling/guidance.py). On the
# learning check's tiny models the speed layers move the head only with guidance (benchmarks/README.md); EMO's
# sampler has none (1.0), which a run at full size can choose with --speed-cfg 1.
SPEED_CFG = 4.0


@dataclass
class TrainConfig:
    stage: int
    data: str
    init: str
    out: str
    steps: int = 1000
    batch: int | None = None           # per process (accelerate: the global batch is batch x processes)
    frames: int | None = None          # f target frames per sample (stage 1: always 1)
    motion_frames: int | None = None   # n motion frames before the targets (stage 1: always 0)
    resolution: int | None = None      # pixels; default: the model's
    lr: float = 1e-5
    warmup_steps: int = 0
    save_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: str | None = None          # "latest" or a checkpoint folder
    seed: int = 0
    lora: int | None = None            # LoRA rank (None: full training of the stage's modules)
    lora_alpha: float | None = None    # default: the rank (scale 1)
    motion_module: str | None = None   # AnimateDiff v2 motion-module file for fresh temporal modules (stage 2)
    vae: str | None = None             # VAE folder/file when the init has none (tiny and SD1.5 UNet inits);
                                       # "tiny" (with init tiny): a tiny VAE trained on DATA's frames first
    audio_encoder: str | None = None   # wav2vec2 folder when the init has none
    # Loss and noise (training.md §2)
    snr_gamma: float | None = 5.0      # min-SNR weighting; None: plain mean
    noise_offset: float = 0.05         # offset noise, per sample and channel, shared over frames
    timesteps: str | None = None       # "uniform", or "late": more of the noisiest steps, where a clip's pose and
                                       # motion are decided (NoiseSchedule.sample); stage default (stage 3: late)
    # Conditioning dropout: whole batch, one draw per step (as Hallo)
    drop_reference: float | None = None  # no reference (+ face locator, identity, motion frames); stage default
    drop_audio: float = 0.05           # audio tokens zeroed (after the projection, as the sampler's uncond)
    first_clip: float | None = None    # per sample: motion frames as the sampler makes them for a first clip;
                                       # stage default (0.05; stage 3: 0.5, where speed is the only motion cue)
    first_clip_start: str = "hold"     # a drawn first clip starts from: "hold" = the frame before the targets, as
                                       # reference and (for "reference" models) every motion frame: the sampler's
                                       # first clip, which starts at the reference's pose; "reference" = the
                                       # window's own reference (a frame >= 30 frames away)
    balance_speed: bool | None = None  # stages 2-3: draw videos evenly over the speed buckets (stage 3 default:
                                       # yes; stage 2: no, yes when still heads dominate the footage)
    speed_cfg: float = SPEED_CFG       # stage 3: the speed guidance written into RUN/model's config (the sampler's
                                       # default for it; 1.0 = none, EMO's sampler)
    # Optimizer
    weight_decay: float = 1e-2
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # "no", "fp16", "bf16"; None: accelerate's launcher / config decides ("no")
    gradient_checkpointing: bool = False  # recompute each layer in the backward pass instead of keeping its
                                          # activations (512² stage-2 LoRA: 48 -> 5 GB; one more forward a step)
    device: str = "auto"               # "auto" (accelerate's choice) or "cpu"

    def __post_init__(self):
        if self.stage not in STAGE_DEFAULTS:
            raise EMOInputError(f"--stage must be 1, 2 or 3 (got {self.stage})")
        f, n, b, drop = STAGE_DEFAULTS[self.stage]
        if self.stage == 1:
            if self.frames not in (None, 1) or self.motion_frames not in (None, 0):
                raise EMOInputError("stage 1 trains on single images: leave --frames and --motion-frames unset "
                                    "(they are 1 and 0)")
            self.frames, self.motion_frames = 1, 0
        self.frames = f if self.frames is None else int(self.frames)
        self.motion_frames = n if self.motion_frames is None else int(self.motion_frames)
        self.batch = b if self.batch is None else int(self.batch)
        self.drop_reference = drop if self.drop_reference is None else float(self.drop_reference)
        self.first_clip = FIRST_CLIP[self.stage] if self.first_clip is None else float(self.first_clip)
        self.balance_speed = self.stage == 3 if self.balance_speed is None else bool(self.balance_speed)
        if self.timesteps is None:
            self.timesteps = "late" if self.stage == 3 else "uniform"
        if self.timesteps not in ("uniform", "late"):
            raise EMOInputError(f"timesteps is 'uniform' or 'late' (got {self.timesteps!r})")
        if self.first_clip_start not in ("hold", "reference"):
            raise EMOInputError(f"first_clip_start is 'hold' or 'reference' (got {self.first_clip_start!r})")
        self.adam_betas = tuple(self.adam_betas)
        if not float(self.speed_cfg) >= 0.0:
            raise EMOInputError(f"--speed-cfg must be 0 or more, 1 = no speed guidance (got {self.speed_cfg})")
        for name in ("steps", "batch", "frames", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise EMOInputError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.motion_frames < 0:
            raise EMOInputError(f"--motion-frames must be 0 or more (got {self.motion_frames})")
        if self.lora is not None and self.lora < 1:
            raise EMOInputError(f"--lora RANK must be at least 1 (got {self.lora})")
        for name in ("drop_reference", "drop_audio", "first_clip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise EMOInputError(f"{name} is a probability: give a value in 0..1 (got {getattr(self, name)})")

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))

    # What must not change between a run and its resumption (the rest, e.g. --steps or --save-every, may).
    TRAJECTORY_KEYS = ("stage", "init", "batch", "frames", "motion_frames", "resolution", "seed", "lora",
                       "lora_alpha", "motion_module", "snr_gamma", "noise_offset", "drop_reference", "drop_audio",
                       "first_clip", "first_clip_start", "balance_speed", "timesteps")
