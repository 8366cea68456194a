"""A tiny in-memory talking-face set giving EMODataset's samples (emo_model/train/data_format.py), so the trainer's
tests do not depend on prepare-data: a bright disc (the face) with a dark mouth whose height follows the loudness of
a tone-burst track."""
import math
import random

import numpy as np
import torch

FPS, SR, R = 25, 16000, 64


class TinyTalkingSet:
    fps = FPS

    def __init__(self, frames=1, motion_frames=0, videos=2, length=24, seed=0):
        self.f, self.n = frames, motion_frames
        rng = np.random.default_rng(seed)
        self.videos = []
        yy, xx = np.mgrid[0:R, 0:R] / R
        for v in range(videos):
            env = np.clip(np.sin(np.arange(length) * (0.5 + 0.2 * v)) * 0.5 + 0.5, 0, 1).astype(np.float32)
            t = np.arange(length * SR // FPS) / SR
            wave = (np.repeat(env, SR // FPS) * np.sin(2 * math.pi * (180 + 40 * v) * t)).astype(np.float32)
            tone = rng.uniform(0.3, 0.9, 3)
            frames = []
            for i in range(length):
                face = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.09)
                mouth = (abs(xx - 0.5) < 0.1) & (abs(yy - 0.62) < 0.01 + 0.06 * env[i])
                img = np.where(face[..., None], tone, 0.1) * (1 - 0.8 * mouth[..., None])
                frames.append(torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1) * 2 - 1)
            mask = torch.zeros(1, R, R)
            mask[:, 12:52, 12:52] = 1
            speed = torch.full((length,), float(v), dtype=torch.float32)
            self.videos.append(dict(frames=torch.stack(frames), wave=torch.from_numpy(wave), mask=mask, speed=speed))

    def __len__(self):
        return len(self.videos)

    def video_speeds(self):
        return [v["speed"] for v in self.videos]

    def all_speeds(self):
        return torch.cat([v["speed"] for v in self.videos]).numpy()

    def __getitem__(self, i):
        v = self.videos[i]
        T = v["frames"].shape[0]
        start = random.randint(self.n, T - self.f)
        ref = random.choice([j for j in range(T) if not start <= j < start + self.f])
        return {"pixels": v["frames"][start - self.n:start + self.f], "reference": v["frames"][ref],
                "face_mask": v["mask"], "speed": v["speed"][start:start + self.f], "frame_range": (start, start + self.f),
                "first_clip": False, "video": i, "name": f"clip{i}", "waveform": v["wave"],
                "identity": torch.zeros(512), "has_identity": False}
