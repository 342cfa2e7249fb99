"""Pack the win_amd64 abi3 wheel from the source tree and a cross-built _pr_cffi.pyd.

    python3 pack_wheel.py REPO PYD OUTDIR   -> prints the wheel's path

setuptools cannot cross-compile for Windows, so the Wine harness builds the
extension with mingw-w64 and this script lays out the wheel the way
``bdist_wheel`` (py_limited_api=cp310) would: the package, the .pyd, and a
dist-info with METADATA, WHEEL, entry_points.txt and a RECORD of sha256s.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import pathlib
import sys
import tomllib
import zipfile

TAG = "cp310-abi3-win_amd64"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _metadata(project: dict) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}",
             f"Version: {project['version']}", f"Summary: {project['description']}",
             f"Requires-Python: {project['requires-python']}"]
    license = project.get("license")  # "MIT" (PEP 639) or {text = "MIT"}
    if license:
        lines.append(f"License: {license if isinstance(license, str) else license['text']}")
    lines += [f"Classifier: {c}" for c in project.get("classifiers", [])]
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {d}; extra == "{extra}"' for d in deps]
    return "\n".join(lines) + "\n"


def _version(init: pathlib.Path) -> str:
    """``__version__`` of the package, read as setuptools' ``attr:`` reads it."""
    for node in ast.parse(init.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "__version__"):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{init}: no __version__")


def main(repo: pathlib.Path, pyd: pathlib.Path, outdir: pathlib.Path) -> pathlib.Path:
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    name = project["name"]
    # pyproject.toml names the version dynamic: __init__.py holds the one copy.
    version = project["version"] = _version(repo / "src" / name / "__init__.py")
    dist_info = f"{name}-{version}.dist-info"

    files: dict[str, bytes] = {}
    package = repo / "src" / name
    for path in sorted(package.iterdir()):
        # Only sources and markers: a Linux build (_pr_cffi.abi3.so) may lie there.
        if path.suffix == ".py" or path.name == "py.typed":
            files[f"{name}/{path.name}"] = path.read_bytes()
    files[f"{name}/_pr_cffi.pyd"] = pyd.read_bytes()

    files[f"{dist_info}/METADATA"] = _metadata(project).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: portreserve pack_wheel.py\n"
        f"Root-Is-Purelib: false\nTag: {TAG}\n").encode()
    scripts = project.get("scripts", {})
    if scripts:
        files[f"{dist_info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())).encode()
    files[f"{dist_info}/top_level.txt"] = f"{name}\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n"
                     for path, data in files.items())
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()

    outdir.mkdir(parents=True, exist_ok=True)
    wheel = outdir / f"{name}-{version}-{TAG}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


if __name__ == "__main__":
    repo, pyd, outdir = map(pathlib.Path, sys.argv[1:4])
    print(main(repo, pyd, outdir))
