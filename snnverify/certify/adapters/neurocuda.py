"""neurocuda 0.2.0 ``convert(ann, train_loader, qcfs_epochs, if_epochs=0, strategy="qcfs_direct")``, in a worker."""

from snnverify.certify.adapters.peer import PeerAdapter


class NeurocudaAdapter(PeerAdapter):
    """CS-QCFS (L = 8, per-channel λ) trained for ``qcfs_epochs`` with labels (0 without a
    train_loader: λ stays at its initial 2.0), then IFNeuron: v[0] = θ/2, fire on v ≥ θ, soft reset."""

    name = "neurocuda"
    converter = "neurocuda"
    options = {"qcfs_epochs": 1}
    semantics = {"reset": "subtract", "v_init": "half", "fire": "ge"}
    capabilities = {"residual", "batchnorm", "nir_export"}
