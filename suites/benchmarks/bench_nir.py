"""asv benchmarks: NIR export and import of the converted CIFAR ResNet-18.

``time_``/``peakmem_`` of ``snnverify.to_nir`` and ``snnverify.from_nir`` per mode, beside
``track_`` of the file size, on a network converted from random weights with random calibration
data (file size and speed do not depend on training). Run:
``asv run --python=same -E existing --bench bench_nir``.
"""

import tempfile
from pathlib import Path

import snnverify
from snnverify.api import SNN
from snnverify.jobs.speed import converted


class NIRResNet18:
    params = [["lossless", "plain"]]
    param_names = ["mode"]
    timeout = 600
    number = 1
    repeat = 3
    rounds = 1

    def setup_cache(self):
        return converted("cifar_resnet18")[1]

    def setup(self, graph, mode):
        self.snn = SNN(graph, 8)
        self.directory = tempfile.TemporaryDirectory()
        self.written = Path(self.directory.name) / "written.nir"
        self.path = Path(self.directory.name) / "resnet18.nir"
        snnverify.to_nir(self.snn, self.path, mode=mode)

    def teardown(self, graph, mode):
        self.directory.cleanup()

    def time_export(self, graph, mode):
        snnverify.to_nir(self.snn, self.written, mode=mode)

    def peakmem_export(self, graph, mode):
        snnverify.to_nir(self.snn, self.written, mode=mode)

    def time_import(self, graph, mode):
        snnverify.from_nir(self.path)

    def peakmem_import(self, graph, mode):
        snnverify.from_nir(self.path)

    def track_file_size(self, graph, mode):
        return self.path.stat().st_size / 2**20

    track_file_size.unit = "MiB"
