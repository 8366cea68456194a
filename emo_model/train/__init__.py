"""Training: data preparation (`prepare-data`), datasets, the three EMO stages, the learning check."""


def run_stage(stage, data, init, out, steps, **opts):
    """Trains one EMO stage (see `trainer.run_stage`); imported lazily so `emo_model.train` stays light."""
    from .trainer import run_stage as _run_stage
    return _run_stage(stage, data, init, out, steps, **opts)
