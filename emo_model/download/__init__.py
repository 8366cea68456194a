"""Getting a model's weights in one explicit step: `python -m emo_model download NAME` and the EMO Download Models
node. Manifests (manifests/*.json) name the files each model needs, pinned to a commit, with sizes and sha256s.
Nothing here runs at import, at load or during a render."""
from .cli import add_parser
from .fetch import Progress, Result, download, status
from .hub import EMODownloadError
from .manifest import FileEntry, Manifest, builtin_manifest, builtin_names, load_manifest, parse_manifest
from .paths import default_dest

__all__ = ["add_parser", "download", "status", "Progress", "Result", "EMODownloadError", "Manifest", "FileEntry",
           "builtin_manifest", "builtin_names", "load_manifest", "parse_manifest", "default_dest"]
