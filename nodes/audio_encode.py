"""Audio Encode: core AUDIO -> encoded audio tokens, the frame count at `fps`, and the trimmed AUDIO."""
import logging

from ..emo_model.errors import EMOInputError
from .comfy_bridge import CATEGORY, EmoAudio, EmoModel, io

log = logging.getLogger(__name__)
AUTO_FPS = 0.0  # fps widget value meaning "what the checkpoint was made for" (EMOConfig.sampling)


def audio_track(audio, what: str = "Audio Encode"):
    """AUDIO dict -> (waveform `[channels, samples]` float32 cpu, sample rate Hz); batch must be 1."""
    if audio is None:
        raise EMOInputError(f"{what}: the AUDIO input is empty (None): the video or file you loaded has no sound "
                            "track. Connect a Load Audio node, or a video that has sound.")
    wave, rate = audio.get("waveform"), audio.get("sample_rate")
    if wave is None or rate is None:
        raise EMOInputError(f"{what}: AUDIO needs 'waveform' and 'sample_rate' (got keys {sorted(audio)}): "
                            "connect a core AUDIO output such as Load Audio")
    if wave.ndim == 2:
        wave = wave[None]
    if wave.ndim != 3:
        raise EMOInputError(f"{what}: AUDIO waveform has shape {list(wave.shape)}, expected [batch, channels, samples]")
    if wave.shape[0] != 1:
        raise EMOInputError(f"{what}: got a batch of {wave.shape[0]} audio tracks; EMO takes one voice track: "
                            "split the batch or pick one track first")
    return wave[0].float().cpu(), int(rate)


class EMOAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMOAudioEncode",
            display_name="EMO Audio Encode",
            category=CATEGORY,
            description="Encodes a speech or singing track into per-frame audio features for the EMO Sampler. "
                        "Any sample rate and channel count (mixed to mono and resampled inside). Also gives the "
                        "frame count at the chosen fps and the trimmed audio, to pass on to Video Combine.",
            inputs=[
                EmoModel.Input("emo_model", tooltip="From Load EMO Models (its audio encoder is used)."),
                io.Audio.Input("audio", tooltip="The voice track (core AUDIO, e.g. from Load Audio or Get Video "
                                                "Components). One track; any sample rate and channel count."),
                io.Float.Input("fps", default=AUTO_FPS, min=0.0, max=120.0, step=0.001, round=0.001,
                               tooltip="Frame rate of the video to make (fractional allowed: 29.97 is stored as "
                                       "30000/1001). 0 = auto: what the checkpoint was made for (EMO and Hallo "
                                       "25, EchoMimic 24)."),
                io.Float.Input("start", default=0.0, min=0.0, max=1e6, step=0.01, optional=True,
                               tooltip="Seconds to skip at the start of the track."),
                io.Float.Input("duration", default=0.0, min=0.0, max=1e6, step=0.01, optional=True,
                               tooltip="Seconds to use from `start`; 0 = to the end of the track."),
            ],
            outputs=[
                EmoAudio.Output(display_name="encoded_audio", tooltip="Audio features for the EMO Sampler."),
                io.Int.Output(display_name="frames", tooltip="Video frames that cover the (trimmed) audio at fps."),
                io.Audio.Output(display_name="audio", tooltip="The trimmed track, exactly what was encoded: "
                                                              "connect it to Video Combine."),
            ],
        )

    @classmethod
    def execute(cls, emo_model, audio, fps, start=0.0, duration=0.0):
        wave, rate = audio_track(audio)
        total = wave.shape[1]
        first = round(start * rate)
        if first >= total:
            raise EMOInputError(f"Audio Encode: start {start:g} s is at or past the end of the track "
                                f"({total / rate:.2f} s): lower `start`")
        last = total if duration <= 0 else min(total, first + round(duration * rate))
        trimmed = wave[:, first:last].contiguous()
        if fps == AUTO_FPS:
            fps = emo_model.model.config.sampling().fps
            log.info("EMO Audio Encode: auto fps of the checkpoint: %g", fps)
        emo_model.to_compute_device()
        encoded = emo_model.pipeline.encode_audio(trimmed, rate, fps)
        return io.NodeOutput(encoded, int(encoded.num_frames), {"waveform": trimmed[None], "sample_rate": rate})
