"""Stand-in for `comfy_api.latest._io` (the V3 schema API of ComfyUI 0.3.64), reduced to what node packs
declare: socket types with Input/Output, Schema, ComfyNode, Hidden, NodeOutput. Same names, same
keyword arguments, same class-clone execution (`PREPARE_CLASS_CLONE` + `EXECUTE_NORMALIZED`)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


def _prune(d):
    return {k: v for k, v in d.items() if v is not None}


class Input:
    Parent = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    @property
    def io_type(self):
        return self.Parent.io_type

    def as_dict(self):
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy}) | _prune(self.extra_dict)

    def get_io_type(self):
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self):
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "forceInput": self.force_input})


class Output:
    Parent = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    @property
    def io_type(self):
        return self.Parent.io_type


def _socket(io_type: str, input_cls=Input):
    """A ComfyType class with nested Input/Output bound to io_type (what `@comfytype` does)."""
    inp = type("Input", (input_cls,), {})
    out = type("Output", (Output,), {})
    cls = type(io_type.title(), (), {"io_type": io_type, "Input": inp, "Output": out})
    inp.Parent = out.Parent = cls
    return cls


def Custom(io_type: str):
    return _socket(io_type)


class _Number(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None, round=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round
        self.control_after_generate, self.display_mode = control_after_generate, display_mode

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step, "round": self.round,
                                           "control_after_generate": self.control_after_generate})


class _IntInput(_Number):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, min, max, step, control_after_generate,
                         display_mode, socketless, force_input)


class _FloatInput(_Number):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, min, max, step, None, display_mode,
                         socketless, force_input, round)


class _StringInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder = multiline, placeholder


class _BooleanInput(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, label_on=None,
                 label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.label_on, self.label_off = label_on, label_off


class _ComboInput(WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        if isinstance(default, Enum):
            default = default.value
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.upload, self.control_after_generate = options, upload, control_after_generate

    def as_dict(self):
        return super().as_dict() | _prune({"options": self.options,
                                           **({self.upload.value: True} if self.upload is not None else {})})


Boolean = _socket("BOOLEAN", _BooleanInput)
Int = _socket("INT", _IntInput)
Float = _socket("FLOAT", _FloatInput)
String = _socket("STRING", _StringInput)
Combo = _socket("COMBO", _ComboInput)
Image = _socket("IMAGE")
Mask = _socket("MASK")
Latent = _socket("LATENT")
Audio = _socket("AUDIO")
Video = _socket("VIDEO")
Vae = _socket("VAE")
Model = _socket("MODEL")
AudioEncoder = _socket("AUDIO_ENCODER")
AnyType = _socket("*")


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    def __init__(self, unique_id=None, prompt=None, extra_pnginfo=None, dynprompt=None, **kwargs):
        self.unique_id, self.prompt, self.extra_pnginfo, self.dynprompt = unique_id, prompt, extra_pnginfo, dynprompt

    def __getattr__(self, key):
        return None

    @classmethod
    def from_dict(cls, d):
        d = d or {}
        return cls(unique_id=d.get(Hidden.unique_id), prompt=d.get(Hidden.prompt),
                   extra_pnginfo=d.get(Hidden.extra_pnginfo), dynprompt=d.get(Hidden.dynprompt))


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ins = [i.id for i in self.inputs or []]
        outs = [o.id for o in self.outputs or []]
        if len(set(ins)) != len(ins) or len(set(outs)) != len(outs) or set(ins) & set(outs):
            raise ValueError(f"{self.node_id}: input and output ids must be unique ({ins}, {outs})")

    def finalize(self):
        if self.is_output_node:
            self.hidden = list(self.hidden or [])
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        for i, o in enumerate(self.outputs or []):
            if o.id is None:
                o.id = f"_{i}_{o.io_type}_"


class NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None
    hidden: HiddenHolder = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        cls.SCHEMA = schema
        return schema

    @classmethod
    def INPUT_TYPES(cls, include_hidden=True, return_schema=False):
        schema = cls.GET_SCHEMA()
        out = {"required": {}}
        for i in schema.inputs or []:
            d = i.as_dict()
            d.pop("optional", None)
            out.setdefault("optional" if i.optional else "required", {})[i.id] = (i.get_io_type(), d)
        if include_hidden and schema.hidden:
            out["hidden"] = {h.name: (h.value,) for h in schema.hidden}
        return (out, schema) if return_schema else out

    @classmethod
    def RETURN_TYPES(cls):
        return [o.io_type for o in cls.GET_SCHEMA().outputs or []]

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict):
        clone = type(f"{cls.__name__}Clone", (cls,) + cls.__bases__, dict(cls.__dict__))
        clone.hidden = HiddenHolder.from_dict(hidden_inputs)
        return clone

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:
        out = cls.execute(*args, **kwargs)
        if out is None:
            return NodeOutput()
        if isinstance(out, NodeOutput):
            return out
        if isinstance(out, tuple):
            return NodeOutput(*out)
        raise Exception(f"Invalid return type from node: {type(out)}")
