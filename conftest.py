"""Loads the snnverify pytest plugin (options, markers, Hypothesis profiles, report header)."""

pytest_plugins = ["snnverify.pytest_plugin"]
