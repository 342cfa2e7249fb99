import sys

from setuptools import Extension, setup

# The LD_PRELOAD library that hands reserved ports to child processes
# (csrc/pr_preload.c).  Not a Python module: it links libc alone and is loaded
# by the dynamic linker into the child; built as an extension so that it
# lands in the package (wheel and editable install) under a known name.
preload = [Extension("portreserve._preload", ["csrc/pr_preload.c"], py_limited_api=True,
                     extra_compile_args=["-fvisibility=hidden"], libraries=["dl"])]

# Everything else is in pyproject.toml; cffi_modules has no declarative form.
setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    ext_modules=preload if sys.platform.startswith("linux") else [],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
