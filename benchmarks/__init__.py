"""portreserve benchmarks: the C floor, cffi vs ctypes, peers, a busy host.

Run ``python -m benchmarks --help`` from the repository root; see
docs/benchmarks.md.  Not a test suite: pytest collects only tests/.
"""
