"""EMO Download Models: fetch a model's files into ComfyUI/models/emo/NAME/, only when queued.

Progress bar in bytes (plus a "1.2 of 5.6 GB, 23 MB/s" text under the node); Cancel stops it and keeps what was
fetched, so the next run continues. Its output is the model's name, for Load EMO Models' checkpoint input.
"""
import logging
from pathlib import Path

import comfy.utils

from ..emo_model.download import builtin_manifest, builtin_names, download, status
from .comfy_bridge import CATEGORY, emo_roots, io, model_management

logger = logging.getLogger(__name__)
ModelName = io.Custom("COMBO")  # a model name that feeds a combo input (Load EMO Models' checkpoint)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _text(text: str, node_id) -> None:
    """The line under the node (ComfyUI's progress text); silently nothing where the server has no such call."""
    try:
        from server import PromptServer
        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # not running in ComfyUI's server, or an older one
        pass


class EMODownloadModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EMODownloadModels",
            display_name="EMO Download Models",
            category=CATEGORY,
            description="Downloads a model's files (only those inference needs, each checked against its sha256) "
                        "from Hugging Face into ComfyUI/models/emo/<model>/, when the workflow is queued; nothing is "
                        "fetched otherwise. A cut or cancelled download continues where it stopped. Honours "
                        "HF_ENDPOINT (mirrors), HF_HUB_OFFLINE and your Hugging Face token. Connect its output to "
                        "Load EMO Models' checkpoint.",
            inputs=[
                io.Combo.Input("model", options=builtin_names(), default="hallo",
                               tooltip="hallo (MIT, about 5.6 GB) or an EchoMimic set (Apache-2.0, about 8.9 GB "
                                       "each): echomimic (audio-driven), -acc (6 steps), -pose, -pose-acc "
                                       "(landmark-driven)."),
                io.Boolean.Input("with_identity", default=False,
                                 tooltip="Hallo only: also fetch insightface's face-identity models (0.28 GB). "
                                         "Their licence is NON-COMMERCIAL research use only; without them Hallo "
                                         "uses a zero identity embedding."),
                io.Boolean.Input("verify", default=False,
                                 tooltip="Rehash every installed file and fetch again any that changed (takes a "
                                         "minute for several GB)."),
                io.String.Input("endpoint", default="", optional=True,
                                tooltip="A Hugging Face mirror URL; empty: HF_ENDPOINT, else huggingface.co."),
            ],
            outputs=[ModelName.Output(display_name="checkpoint",
                                      tooltip="The installed model's name: connect it to Load EMO Models' "
                                              "checkpoint input.")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, model, with_identity, verify, endpoint=""):
        """Re-run while the model is not complete (or when asked to verify); a complete one is not checked again."""
        if verify:
            return float("nan")
        groups = ["identity"] if with_identity and "identity" in builtin_manifest(model).extras else []
        return status(builtin_manifest(model), Path(emo_roots()[0]), groups)["state"]

    @classmethod
    def execute(cls, model, with_identity, verify, endpoint=""):
        manifest = builtin_manifest(model)
        groups = ["identity"] if with_identity and "identity" in manifest.extras else []
        if with_identity and not groups:
            logger.warning("EMO Download Models: %s has no identity files; with_identity is ignored", model)
        for g in groups:
            logger.warning("EMO Download Models: %s '%s' files: %s", model, g, manifest.extras[g].licence)
        logger.info("EMO Download Models: %s from %s (licence: %s)", model, manifest.repo, manifest.licence)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        bar = comfy.utils.ProgressBar(1, node_id=node_id)

        def progress(p):
            model_management.throw_exception_if_processing_interrupted()  # Cancel: the .part files stay
            bar.update_absolute(p.done, max(p.total, 1))
            _text(f"{p.file}\n{_gb(p.done)} of {_gb(p.total)}, {p.speed / 1e6:.1f} MB/s "
                  f"(file {min(p.files_done + 1, p.files_total)}/{p.files_total})", node_id)

        result = download(manifest, Path(emo_roots()[0]), groups, verify=verify, endpoint=endpoint or None,
                          progress=progress, log=lambda s: logger.info("EMO Download Models: %s", s))
        done = (f"fetched {len(result.fetched)} file(s), {_gb(result.transferred)}" if result.fetched
                else "already installed and complete")
        logger.info("EMO Download Models: %s in %s: %s", model, result.path, done)
        _text(f"{model}: {done}", node_id)
        return io.NodeOutput(manifest.name)
