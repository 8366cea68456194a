"""Load the node pack like ComfyUI does and run API-format prompts along ComfyUI's execute path.

`use_stubs(base)` puts the stand-ins of this folder first on sys.path and points folder_paths at `base`.
`load_pack()` imports the repo root as a package (spec_from_file_location with submodule_search_locations,
as `nodes.load_custom_node` does), refuses NODE_CLASS_MAPPINGS beside comfy_entrypoint, and returns
{node id: class} from the extension's node list. `run_prompt()` validates a prompt the way
`execution.validate_inputs` does (unknown inputs are reported too), orders nodes back from the output
nodes, builds inputs (links -> upstream outputs, widgets -> values), sets hidden inputs
(unique_id, prompt, extra_pnginfo), calls V3 nodes through PREPARE_CLASS_CLONE + EXECUTE_NORMALIZED and V1
nodes through FUNCTION, and collects the `ui` dicts.
"""
import asyncio
import importlib.util
import inspect
import sys
from pathlib import Path

STUBS = Path(__file__).resolve().parent
ROOT = STUBS.parents[1]
PACK_MODULE = "emo_pack_under_test"


def use_stubs(base) -> None:
    if str(STUBS) not in sys.path:
        sys.path.insert(0, str(STUBS))
    import folder_paths
    folder_paths._reset_for_tests(str(base))


def _run(x):
    return asyncio.run(x) if inspect.isawaitable(x) else x


def load_pack():
    """Import the pack fresh (module-level folder registration runs against the current folder_paths)."""
    for name in [m for m in sys.modules if m == PACK_MODULE or m.startswith(PACK_MODULE + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    if hasattr(module, "NODE_CLASS_MAPPINGS"):
        raise AssertionError("the pack exports NODE_CLASS_MAPPINGS: ComfyUI would then never call comfy_entrypoint")
    extension = _run(module.comfy_entrypoint())
    _run(extension.on_load())
    classes = {}
    for cls in _run(extension.get_node_list()):
        schema = cls.GET_SCHEMA()
        if schema.node_id in classes:
            raise AssertionError(f"node id {schema.node_id} is registered twice")
        classes[schema.node_id] = cls
    return module, classes


def all_classes(pack_classes: dict) -> dict:
    import comfy_core_nodes
    return {**comfy_core_nodes.NODE_CLASS_MAPPINGS, **pack_classes}


def _is_v3(cls) -> bool:
    return hasattr(cls, "GET_SCHEMA")


def _input_types(cls) -> dict:
    return cls.INPUT_TYPES(include_hidden=False) if _is_v3(cls) else cls.INPUT_TYPES()


def _return_types(cls) -> list:
    return list(cls.RETURN_TYPES() if _is_v3(cls) else cls.RETURN_TYPES)


def _is_output(cls) -> bool:
    return cls.GET_SCHEMA().is_output_node if _is_v3(cls) else getattr(cls, "OUTPUT_NODE", False)


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


class PromptError(Exception):
    def __init__(self, errors: dict):
        super().__init__("prompt failed validation: " + "; ".join(f"node {k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_prompt(prompt: dict, classes: dict) -> dict:
    """{node id: [error strings]} for the whole prompt; empty when ComfyUI would accept it."""
    errors = {}
    for nid, node in prompt.items():
        errs = []
        cls = classes.get(node.get("class_type"))
        if cls is None:
            errors[nid] = [f"unknown node type {node.get('class_type')!r}"]
            continue
        types = _input_types(cls)
        spec = {**types.get("required", {}), **types.get("optional", {})}
        inputs = node.get("inputs", {})
        for name in types.get("required", {}):
            if name not in inputs:
                errs.append(f"required input missing: {name}")
        for name, value in inputs.items():
            if name not in spec:
                errs.append(f"input {name!r} does not exist on {node['class_type']}")
                continue
            io_type, opts = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {})
            if _is_link(value):
                src = prompt.get(value[0])
                if src is None or src["class_type"] not in classes:
                    errs.append(f"{name}: linked to missing node {value[0]}")
                    continue
                out_types = _return_types(classes[src["class_type"]])
                if value[1] >= len(out_types):
                    errs.append(f"{name}: {src['class_type']} has no output {value[1]}")
                    continue
                got = out_types[value[1]]
                want = "COMBO" if isinstance(io_type, list) else io_type
                if got != want and "*" not in (got, want):
                    errs.append(f"{name}: received {got}, expects {want}")
                continue
            try:
                if io_type == "INT":
                    value = int(value)
                elif io_type == "FLOAT":
                    value = float(value)
            except (TypeError, ValueError):
                errs.append(f"{name}: {value!r} is not a {io_type}")
                continue
            custom = getattr(cls, "validate_inputs", None)
            has_custom = custom is not None and name in inspect.signature(custom).parameters
            if has_custom:
                continue  # ComfyUI skips its own range/list checks for inputs the node validates itself
            if "min" in opts and value < opts["min"]:
                errs.append(f"{name}: {value} smaller than min {opts['min']}")
            if "max" in opts and value > opts["max"]:
                errs.append(f"{name}: {value} bigger than max {opts['max']}")
            options = io_type if isinstance(io_type, list) else opts.get("options") if io_type == "COMBO" else None
            if options is not None and value not in options:
                errs.append(f"{name}: {value!r} not in {options}")
        if _is_v3(cls) and "validate_inputs" in {k for c in cls.__mro__ for k in vars(c)} and not errs:
            params = inspect.signature(cls.validate_inputs).parameters
            named = {k: (None if _is_link(v) else v) for k, v in inputs.items() if k in params}
            if named:
                ok = cls.PREPARE_CLASS_CLONE({}).validate_inputs(**named)
                if ok is not True:
                    errs.append(f"custom validation failed: {ok}")
        if errs:
            errors[nid] = errs
    return errors


def run_prompt(prompt: dict, classes: dict, extra_data: dict | None = None) -> dict:
    """Execute an API-format prompt. Returns {node id: {"outputs": tuple, "ui": dict}} for executed nodes."""
    errors = validate_prompt(prompt, classes)
    if errors:
        raise PromptError(errors)
    extra_data = extra_data or {}
    order, seen = [], set()

    def visit(nid):
        if nid in seen:
            return
        seen.add(nid)
        for v in prompt[nid]["inputs"].values():
            if _is_link(v):
                visit(v[0])
        order.append(nid)

    outputs_nodes = [nid for nid, n in prompt.items() if _is_output(classes[n["class_type"]])]
    if not outputs_nodes:
        raise PromptError({"prompt": ["the prompt has no output node"]})
    for nid in sorted(outputs_nodes, key=lambda x: int(x) if x.isdigit() else x):
        visit(nid)
    results = {}
    for nid in order:
        node = prompt[nid]
        cls = classes[node["class_type"]]
        kwargs = {k: (results[v[0]]["outputs"][v[1]] if _is_link(v) else v) for k, v in node["inputs"].items()}
        if _is_v3(cls):
            schema = cls.GET_SCHEMA()
            hidden = {}
            for h in schema.hidden or []:
                hidden[h] = {"UNIQUE_ID": nid, "PROMPT": prompt,
                             "EXTRA_PNGINFO": extra_data.get("extra_pnginfo")}.get(h.value)
            out = cls.PREPARE_CLASS_CLONE(hidden).EXECUTE_NORMALIZED(**kwargs)
            ui = out.ui.as_dict() if out.ui is not None and not isinstance(out.ui, dict) else (out.ui or {})
            results[nid] = {"outputs": tuple(out.args), "ui": ui}
        else:
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                results[nid] = {"outputs": tuple(out.get("result", ())), "ui": out.get("ui", {})}
            else:
                results[nid] = {"outputs": tuple(out), "ui": {}}
    return results
