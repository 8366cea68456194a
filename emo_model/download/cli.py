"""`python -m emo_model download`: the subcommand (registered by emo_model/cli.py through `add_parser`)."""
from __future__ import annotations

import sys

from .fetch import download, status
from .hub import EMODownloadError
from .manifest import Manifest, builtin_manifest, builtin_names, load_manifest
from .paths import default_dest


def add_parser(sub) -> None:
    d = sub.add_parser("download", help="fetch a model's weights (only the files inference needs) into models/emo/",
                       description="Fetch the files a model needs from Hugging Face into DEST/NAME/ (resumable, "
                                   "each file checked against its sha256). DEST defaults to ComfyUI's models/emo/ "
                                   "when run inside a ComfyUI tree, else $EMO_MODELS_DIR, else ./models/emo/.")
    d.add_argument("name", nargs="?", help=f"built-in model: {', '.join(builtin_names())}")
    d.add_argument("--list", action="store_true", help="list the built-in models: size, licence, installed or not")
    d.add_argument("--manifest", help="a manifest JSON file instead of a built-in name (format: README)")
    d.add_argument("--dest", help="the folder the model folder goes in (default: see above)")
    d.add_argument("--with-identity", action="store_true",
                   help="Hallo: also fetch the face-identity files (insightface, NON-COMMERCIAL research licence)")
    d.add_argument("--with", dest="groups", action="append", default=[], metavar="GROUP",
                   help="also fetch this optional group of the manifest's 'extras'")
    d.add_argument("--dry-run", action="store_true", help="show what would be fetched; no request is made")
    d.add_argument("--endpoint", help="Hugging Face endpoint or mirror (default: $HF_ENDPOINT or huggingface.co)")
    d.add_argument("--verify", action="store_true",
                   help="rehash every installed file and fetch again any that changed")
    d.set_defaults(func=run)


def _size(n) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _short(licence: str) -> str:
    return licence.split(" (")[0].split(". ")[0]


def _total(files) -> str:
    sizes = [f.shown_size for f in files]
    return ("≈" if any(f.size is None for f in files) else "") + _size(sum(s or 0 for s in sizes))


def list_models(dest=None) -> int:
    dest = dest or default_dest()
    print(f"models folder: {dest}")
    print(f"{'name':<20} {'size':>10}  {'installed':<10} licence")
    for name in builtin_names():
        m = builtin_manifest(name)
        st = status(m, dest)
        extra = "".join(f"; +{g} {_total(e.files)} ({_short(e.licence)})" for g, e in m.extras.items())
        state = st["state"] + (f" +{','.join(st['groups'])}" if st["groups"] else "")
        print(f"{name:<20} {_total(m.files):>10}  {state:<10} {_short(m.licence)}{extra}")
    return 0


def _manifest(a) -> Manifest:
    if a.manifest:
        return load_manifest(a.manifest)
    if not a.name:
        raise EMODownloadError("name a model (one of " + ", ".join(builtin_names()) + "), or give --manifest FILE, "
                               "or --list")
    return builtin_manifest(a.name)


def run(a) -> int:
    if a.list:
        return list_models(a.dest)
    m = _manifest(a)
    groups = list(dict.fromkeys((["identity"] if a.with_identity else []) + a.groups))
    files = m.selected(groups)  # unknown groups fail here, before anything else
    dest = a.dest or default_dest()
    for g in groups:  # optional parts' licences first: they may be stricter than the model's
        print(f"licence of '{g}' ({m.extras[g].description or 'optional files'}): {m.extras[g].licence}")
    print(f"{m.name}: {m.repo} @ {m.revision[:12]}, licence: {m.licence}")
    print(f"{len(files)} files, {_total(files)}, into {dest}/{m.name}/")
    if a.dry_run:
        r = download(m, dest, groups, verify=a.verify, dry_run=True)
        for path, size in r.planned:
            print(f"  would fetch or check {path} ({_size(size)})")
        if not r.planned:
            print("  nothing to fetch: installed and complete")
        return 0
    from tqdm import tqdm
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=m.name, dynamic_ncols=True,
               disable=None)

    def progress(p):
        bar.total = p.total
        bar.set_postfix_str(f"file {min(p.files_done + 1, p.files_total)}/{p.files_total} {p.file}", refresh=False)
        bar.update(p.done - bar.n)

    try:
        r = download(m, dest, groups, verify=a.verify, endpoint=a.endpoint, progress=progress,
                     log=lambda s: bar.write(s, file=sys.stderr))
    finally:
        bar.close()
    if r.fetched:
        print(f"fetched {len(r.fetched)} file(s), {_size(r.transferred)} transferred")
    else:
        print("nothing to fetch: every file is there and checked" + (" (rehashed)" if a.verify else ""))
    print(f"installed {m.name} in {r.path}: in ComfyUI pick '{m.name}' in Load EMO Models; from the command line: "
          f"python -m emo_model render --model {r.path} --image PORTRAIT --audio TRACK --out OUT.mp4")
    return 0
