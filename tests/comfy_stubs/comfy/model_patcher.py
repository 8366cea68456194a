"""Stand-in for `comfy.model_patcher.ModelPatcher` (constructor signature of ComfyUI 0.3.64)."""


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.parent = None
        if getattr(self.model, "device", None) is None:
            try:
                self.model.device = offload_device
            except AttributeError:
                pass

    def model_size(self):
        if self.size == 0:
            self.size = sum(t.nelement() * t.element_size() for t in self.model.state_dict().values())
        return self.size
