"""EMOConfig: everything that shapes the model and its default sampling settings, stored as the native config.json.

One implementation serves EMO (native), Hallo and EchoMimic; the switches below are what differs between them.
"""
import dataclasses
from dataclasses import dataclass, field

from .errors import EMOCheckpointError

# SD1.5's UNet (diffusers UNet2DConditionModel config); ReferenceNet and backbone share it.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8, cross_attention_dim=768,
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)

# DDIM as Hallo and EchoMimic sample (v-prediction, zero terminal SNR, trailing spacing).
DDIM_V_ZSNR = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    clip_sample=False, steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True,
    timestep_spacing="trailing", set_alpha_to_one=True,
)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings a checkpoint was made for, or the ones a render uses: denoising steps per clip, audio and
    reference guidance scales (1.0 = that guidance off) and video frames per second."""
    steps: int
    audio_cfg: float
    ref_cfg: float
    fps: float


@dataclass
class EMOConfig:
    # How it was made: "native" (EMO), "hallo", "hallo2", "echomimic", "echomimic_v2".
    kind: str = "native"
    resolution: int = 512                   # pixel side of the square face crop
    unet: dict = field(default_factory=lambda: dict(SD15_UNET))
    # What the cross-attention slot (attn2) of the UNets receives: "identity" tokens (Hallo, native),
    # "audio" tokens (EchoMimic; ReferenceNet then has no attn2), or "none".
    cross_attention: str = "identity"
    audio_gain: float = 1.0                 # EchoMimic multiplies the attn2 audio output by 3.0
    # Audio-attention layers after each reference-attention (EMO, Hallo); None when audio uses the attn2 slot.
    audio_attention: dict | None = field(default_factory=lambda: dict(audio_dim=768, regions=False, heads=8))
    # Temporal modules (AnimateDiff v2): heads, position-table length, and whether the blocks without spatial
    # attention (down_blocks.3, up_blocks.0) run theirs (Hallo's official path skips them).
    temporal: dict = field(default_factory=lambda: dict(heads=8, max_len=32, plain_blocks=True))
    temporal_mode: str = "motion_frames"    # "motion_frames" (EMO, Hallo) or "context_windows" (EchoMimic)
    window_shift: int = 2                   # context_windows: the windows shift by window_shift * step frames per step
                                            # (EchoMimic's audio sets 2, its pose sets 3)
    frames_per_clip: int = 12               # f (EMO 12, Hallo 16, EchoMimic's window 12)
    motion_frames: int = 4                  # n (EMO 4, Hallo 2); the window overlap in context_windows mode
    first_clip_motion: str = "reference"    # motion frames of the first clip: "reference" latents repeated, or "zeros"
    # Motion-frame pixel drop (Hallo2): before the motion frames are VAE-encoded, this fraction of their pixels
    # outside the face box is set to 0 (one mask per clip for all motion frames and channels, drawn from the run's
    # seeded generator before the clip's noise). 0 = off (EMO, Hallo); Hallo2 0.25. The sampler's "auto".
    motion_drop: float = 0.0
    hallo_identity_tiling: bool = False     # reproduce Hallo's row tiling of identity tokens in ReferenceNet
    identity: dict | None = field(default_factory=lambda: dict(embed_dim=512, tokens=4))
    face_locator: dict = field(default_factory=lambda: dict(in_channels=1, block_out_channels=[16, 32, 96, 256]))
    # What the face locator sees: "face_mask" (one static face-region mask for every frame) or "pose" (EchoMimic's
    # `_pose` sets: one landmark drawing per video frame, [L, H, W, 3] in 0..1 from pose_frames.load_pose_frames).
    locator_input: str = "face_mask"
    # What the model generates: "face_crop" (a square crop around the face, pasted back into the picture) or "whole"
    # (EchoMimic v2: the whole picture resized to the model's square size is the reference and the output frame).
    framing: str = "face_crop"
    # Audio tokens per frame: wav2vec2 features of all layers in a +-window, projected (EMO, Hallo), or whisper
    # features in a 10-frame chunk used raw (EchoMimic). wav2vec2 keys: fps (the rate it was trained at), window (m),
    # pad_to_clip (Hallo: features padded to whole clips), piece_seconds (Hallo2: the track is encoded in independent
    # pieces of this length, 60 s, as its script cuts it; see `Wav2VecAudioEncoder.encode_pieces`).
    audio_encoder: dict = field(default_factory=lambda: dict(kind="wav2vec2", fps=25.0, window=2))
    audio_projection: dict | None = field(default_factory=lambda: dict(
        seq_len=5, blocks=12, channels=768, intermediate_dim=512, output_dim=768, context_tokens=32))
    speed: dict | None = None               # speed layers: centers, radii, window, dim, hidden
    scheduler: dict = field(default_factory=lambda: dict(DDIM_V_ZSNR))
    init_noise_clamp: float | None = None   # EchoMimic clamps its initial noise to +-1.5
    vae_scale: float = 0.18215
    # Default sampling settings (the sampler's "auto").
    steps: int = 40
    audio_cfg: float = 3.5
    ref_cfg: float = 3.5
    fps: float = 25.0
    speed_value: float = 1.0                # head-motion speed, deg/frame (models with speed layers)
    speed_cfg: float = 1.0                  # speed guidance (sampling/guidance.py); 1.0 = off
    # Trained on whole-frame data (`prepare-data --whole-frame`: already framed faces, e.g. cartoons): render frames
    # the whole picture (centred square) without face detection unless told otherwise (`sampling.reference`).
    whole_frame: bool = False

    def sampling(self, steps: int | None = None, audio_cfg: float | None = None, ref_cfg: float | None = None,
                 fps: float | None = None) -> SamplingSettings:
        """The settings to sample with: each one given, else what this checkpoint was made for (its "auto": e.g.
        EchoMimic's accelerated set 6 steps, no CFG, 24 fps; Hallo 40 steps, CFG 3.5 / 3.5, 25 fps)."""
        return SamplingSettings(steps=int(self.steps if steps is None else steps),
                                audio_cfg=float(self.audio_cfg if audio_cfg is None else audio_cfg),
                                ref_cfg=float(self.ref_cfg if ref_cfg is None else ref_cfg),
                                fps=self.fps if fps is None else fps)

    @property
    def latent_size(self) -> int:
        return self.resolution // 8

    @classmethod
    def from_dict(cls, d: dict) -> "EMOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise EMOCheckpointError(f"unknown config keys {sorted(unknown)}: the model's config.json was written by "
                                     "a newer version of the pack; update the pack")
        return cls(**d)
