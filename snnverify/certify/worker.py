"""A third-party converter in its own interpreter (tools/peers-venv): imports only torch, numpy
and that converter's package, never snnverify.

Speaks JSON lines on stdin/stdout; tensors pass through files (torch.save, numpy .npz):
  {"op": "convert", "converter", "model", "cal", "train", "timesteps", "options"}
      -> {"ok", "version", "training": {"epochs", "samples"}}
  {"op": "run", "x", "timesteps", "out"} -> {"ok"}; ``out`` (.npz) holds "output" [B, classes]
      (averaged over T) and one array per spiking layer, [T, B, ...], in forward order.
  {"op": "to_nir", "path"} -> {"ok"}
Anything the converter prints goes to stderr. A failure answers {"ok": false, "error"}.
"""

import importlib
import importlib.metadata
import json
import sys
import traceback

import numpy as np
import torch

PROTOCOL_OUT = sys.stdout
sys.stdout = sys.stderr  # converters print progress; stdout carries only the protocol


def _loader(path, batch_size, shuffle):
    if path is None:
        return None
    data = torch.load(path, weights_only=True)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data["x"], data["y"]), batch_size=batch_size,
                                       shuffle=shuffle, generator=torch.Generator().manual_seed(0))


class Recorder:
    """Forward hooks on the spiking modules: each call's output per step; a module called at k
    places per step is recorded as k layers (``name``, ``name#2``, ...)."""

    def __init__(self, modules, to_spikes):
        self.modules, self.to_spikes = modules, to_spikes
        self.steps: dict = {}
        self.calls: dict = {}
        for name, module in modules:
            module.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, inputs, output):
            k = self.calls[name] = self.calls.get(name, 0) + 1
            key = name if k == 1 else f"{name}#{k}"
            self.steps.setdefault(key, []).append(self.to_spikes(module, output.detach()))
        return hook

    def new_step(self):
        self.calls = {}

    def run(self, net, x, timesteps):
        """The network stepped T times on the constant input x: its output averaged over T."""
        outputs = []
        for _ in range(timesteps):
            self.new_step()
            outputs.append(net(x))
        return torch.stack(outputs).mean(0)


class SpikingJelly:
    """``ann2snn.Converter(RateCodingRecipe(dataloader, mode))``: IFNode(v_reset=None) between voltage scalers."""

    def __init__(self, model, cal, train, timesteps, options):
        from spikingjelly.activation_based import ann2snn, functional, neuron

        recipe = ann2snn.RateCodingRecipe(dataloader=cal, mode=options.get("mode", "99.9%"))
        self.net = ann2snn.Converter(recipe, device="cpu").convert(model).eval()
        self.reset = lambda: functional.reset_net(self.net)
        self.recorder = Recorder([(n, m) for n, m in self.net.named_modules() if isinstance(m, neuron.BaseNode)],
                                 lambda m, out: out)
        self.version = importlib.metadata.version("spikingjelly")
        self.training = {"epochs": 0, "samples": 0}

    def run(self, x, timesteps):
        self.reset()
        return self.recorder.run(self.net, x, timesteps)


class Sinabs:
    """``sinabs.from_model(model, input_shape, num_timesteps=T)``: IAFSqueeze layers (MultiSpike,
    MembraneSubtract, threshold 1, min_v_mem −1); input [B·T, ...], batch-major."""

    def __init__(self, model, cal, train, timesteps, options):
        import sinabs
        import sinabs.layers as sl

        x = next(iter(cal))[0]
        self.network = sinabs.from_model(model, input_shape=tuple(x.shape[1:]), num_timesteps=timesteps)
        self.net = self.network.spiking_model.eval()
        self.layers = [m for m in self.net.modules() if isinstance(m, sl.SqueezeMixin)]
        self.timesteps = timesteps
        self.recorder = Recorder([(n, m) for n, m in self.net.named_modules() if isinstance(m, sl.StatefulLayer)],
                                 lambda m, out: out)
        self.version = importlib.metadata.version("sinabs")
        self.training = {"epochs": 0, "samples": 0}

    def run(self, x, timesteps):
        for layer in self.layers:
            layer.batch_size, layer.num_timesteps = -1, timesteps
        self.network.reset_states()
        self.recorder.new_step()
        batch = len(x)
        flat = x.unsqueeze(1).expand(batch, timesteps, *x.shape[1:]).reshape(batch * timesteps, *x.shape[1:])
        output = self.net(flat)
        for key, outs in self.recorder.steps.items():  # one call saw all steps: [B·T, ...] -> T arrays
            (whole,) = outs
            whole = whole.reshape(batch, timesteps, *whole.shape[1:]).transpose(0, 1)
            self.recorder.steps[key] = list(whole)
        return output.reshape(batch, timesteps, -1).mean(1)


class Neurocuda:
    """``neurocuda.convert(ann, train_loader, qcfs_epochs, if_epochs, strategy, channel_wise)``:
    CS-QCFS (L = 8) trained, then IFNeuron (v[0] = θ/2, fire on ≥, soft reset) emitting θ·s."""

    def __init__(self, model, cal, train, timesteps, options):
        import neurocuda

        epochs = int(options.get("qcfs_epochs", 1)) if train is not None else 0
        self.net, self.stats = neurocuda.convert(model, train if train is not None else cal, qcfs_epochs=epochs,
                                                 if_epochs=0, strategy="qcfs_direct", channel_wise=True,
                                                 device="cpu", verbose=False)
        self.net.eval()
        self.neurons = [(n, m) for n, m in self.net.named_modules() if type(m).__name__ in ("IFNeuron", "LIFNeuron")]

        def spikes(module, out):
            thresh = module.thresh
            if thresh.dim() == 1:
                thresh = thresh.view(1, -1, *([1] * (out.dim() - 2)))
            return out / thresh

        self.recorder = Recorder(self.neurons, spikes)
        self.version = neurocuda.__version__
        samples = len(train.dataset) * epochs if train is not None else 0
        self.training = {"epochs": epochs, "samples": samples}

    def run(self, x, timesteps):
        for _, module in self.neurons:
            module.reset()
        return self.recorder.run(self.net, x, timesteps)

    def to_nir(self, path):
        """``neurocuda.to_nir`` returns a dict ("NIR-compatible"), written here as JSON."""
        import neurocuda

        exported = neurocuda.to_nir(self.net)
        with open(path, "w") as file:
            json.dump(exported, file, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


CONVERTERS = {"spikingjelly": SpikingJelly, "sinabs": Sinabs, "neurocuda": Neurocuda}


def main():
    converted = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "convert":
                torch.manual_seed(0)
                model = torch.load(request["model"], weights_only=False).eval()
                cal = _loader(request["cal"], 256, False)
                train = _loader(request["train"], 64, True)
                converted = CONVERTERS[request["converter"]](model, cal, train, request["timesteps"],
                                                             request.get("options", {}))
                answer = {"ok": True, "version": converted.version, "training": converted.training}
            elif request["op"] == "run":
                x = torch.load(request["x"], weights_only=True)
                converted.recorder.steps = {}
                with torch.no_grad():
                    output = converted.run(x, request["timesteps"])
                arrays = {"output": output.double().numpy()}
                for i, (name, steps) in enumerate(converted.recorder.steps.items()):
                    spikes = torch.stack(steps).float().numpy()
                    binary = np.isin(spikes, (0.0, 1.0)).all()
                    arrays[f"{i:03d}:{'packed' if binary else 'raw'}:{list(spikes.shape)}:{name}"] = (
                        np.packbits(spikes.astype(np.uint8).ravel()) if binary else spikes)
                np.savez(request["out"], **arrays)
                answer = {"ok": True}
            elif request["op"] == "to_nir":
                converted.to_nir(request["path"])
                answer = {"ok": True}
            else:
                answer = {"ok": False, "error": f"unknown op {request['op']!r}"}
        except Exception as error:  # noqa: BLE001 — sent back as the failure's reason
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        PROTOCOL_OUT.write(json.dumps(answer) + "\n")
        PROTOCOL_OUT.flush()


if __name__ == "__main__":
    main()
