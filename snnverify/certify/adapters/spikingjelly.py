"""SpikingJelly 2.0 ``ann2snn.Converter`` with ``RateCodingRecipe(dataloader, mode="99.9%")``, in a worker."""

from snnverify.certify.adapters.peer import PeerAdapter


class SpikingJellyAdapter(PeerAdapter):
    """ReLU → VoltageScaler · IFNode(v_reset=None) · VoltageScaler, thresholds from the 99.9th
    percentile of calibration activations; IFNode starts at v = 0, fires on v ≥ 1, subtracts.
    ``F.relu`` raises in the recipe ("does not support function node"): functional_relu is not declared."""

    name = "spikingjelly"
    converter = "spikingjelly"
    options = {"mode": "99.9%"}
    semantics = {"reset": "subtract", "v_init": "zero", "fire": "ge"}
    capabilities = {"residual", "batchnorm", "maxpool", "shared_relu"}
