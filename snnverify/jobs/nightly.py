"""``snnverify nightly``: asv on this commit, the static dashboard, and a regression gate."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    raise RuntimeError("snnverify nightly is not available in this build")
