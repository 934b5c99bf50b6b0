"""sinabs 3.1 ``from_model`` (defaults: MultiSpike, MembraneSubtract, threshold 1), in a worker."""

from snnverify.certify.adapters.peer import PeerAdapter


class SinabsAdapter(PeerAdapter):
    """Every ``nn.ReLU`` module becomes an IAFSqueeze layer; no weight normalisation (threshold 1
    in the ANN's own units); v starts at 0, fires on v ≥ θ (several spikes per step when v ≥ 2θ)."""

    name = "sinabs"
    converter = "sinabs"
    semantics = {"reset": "subtract", "v_init": "zero", "fire": "ge"}
    capabilities = {"residual", "batchnorm", "maxpool"}
