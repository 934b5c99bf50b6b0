"""The Loihi 2 report (``reports/loihi2/report.md``) rendered from the ``report.json`` that
``snnverify loihi2`` writes."""

from __future__ import annotations


def render(report: dict) -> str:
    runs = report["runs"]
    label = {"float": "float SNN (`cpu` backend)", "loihi2_subtract": "loihi2_sim, subtractive reset",
             "loihi2_zero": "loihi2_sim, reset to zero (published CUBA-LIF)"}
    lines = [
        f"# Loihi 2 simulator on {report['dataset']} {report['model']}",
        "",
        f"Regenerate: `{report['command']}`",
        "",
        f"Conversion: checkpoint `{report['settings']['checkpoint']}` (ReLU ANN test accuracy "
        f"{100 * report['ann_accuracy']:.2f} %), QCFS L = {report['settings']['levels']}, "
        f"{report['settings']['qcfs_epochs']} QCFS epoch(s), no BPTT fine-tuning. T = {report['timesteps']}, "
        f"{report['samples']} test images, vth = {report['quantisation']['vth']} a_in units per threshold, "
        f"output latency {report['quantisation']['output_latency']} steps (the simulator runs T + latency steps "
        f"and reads the last T).",
        "",
        "| run | accuracy (%) | predictions equal to float SNN (%) | spike mismatch vs float SNN (%) | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        lines.append(f"| {label[name]} | {100 * r['accuracy']:.2f} | {100 * r['prediction_agreement_with_float']:.2f} "
                     f"| {100 * r['spike_mismatch_rate']:.3f} | {r['images_per_s']:.1f} |")
    lines += ["", "Spike mismatch: fraction of IF neuron-timesteps (each layer in its own window) whose spike "
              "(spike count, in a burst layer) differs from the float SNN's. Speed: simulate() with spikes recorded, "
              f"{report['versions']['cpu_threads']} CPU threads, shared machine.", "",
              "## Spike mismatch per layer (%)", "", "| layer | latency | subtractive reset | reset to zero |",
              "|---|---:|---:|---:|"]
    for layer, info in report["quantisation"]["layers"].items():
        lines.append(f"| {layer} | {info['latency']} "
                     f"| {100 * runs['loihi2_subtract']['spike_mismatch_rate_per_layer'][layer]:.3f} "
                     f"| {100 * runs['loihi2_zero']['spike_mismatch_rate_per_layer'][layer]:.3f} |")
    lines += ["", "## Dense registers", "", "| layer | from | kind | weight_exp | num_weight_bits | sign | delay | "
              "max weight error (thresholds) |", "|---|---|---|---:|---:|---|---:|---:|"]
    for layer, info in report["quantisation"]["layers"].items():
        for s in info["synapses"]:
            lines.append(f"| {layer} | {s['from']} | {s['kind']} | {s['weight_exp']} | {s['num_weight_bits']} | "
                         f"{s['sign_mode']} | {s['delay']} | {s['max_weight_error_thresholds']:.2e} |")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}", ""]
    return "\n".join(lines)
