"""What ``snnverify <job>`` runs, one module per job.

A job module has ``add_arguments(parser)`` (its options) and ``main(args) -> int``, which checks
every argument before any work starts. Jobs may import anything in the package; nothing in the
package imports a job.
"""

#: job name -> (module, one-line help)
JOBS = {
    "run": ("snnverify.jobs.run", "train or load an ANN, convert it, measure the SNN over T"),
    "report": ("snnverify.jobs.report", "build reports/index.{md,html}, or re-render one run (PATH)"),
    "speed": ("snnverify.jobs.speed", "time the backends side by side on converted networks"),
    "loihi2": ("snnverify.jobs.loihi2", "measure a converted network on the Loihi 2 simulator"),
    "budget": ("snnverify.jobs.budget", "sweep conversion recipes at equal training budget"),
    "sparsity": ("snnverify.jobs.sparsity", "sweep the rate penalty: accuracy gap, spike rate and CPU time"),
    "certify": ("snnverify.jobs.certify", "certify converters clause by clause, side by side"),
    "bench": ("snnverify.jobs.bench", "run a published protocol (train, convert, T sweep) over several seeds"),
    "nightly": ("snnverify.jobs.nightly", "asv on this commit, the dashboard published, regressions beyond a threshold fail"),
}
