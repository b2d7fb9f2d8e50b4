"""Shared test set-up: run Triton kernels through the interpreter on CPU-only machines.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
On a machine with a GPU, export TRITON_INTERPRET=0 to test the compiled kernels instead.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
