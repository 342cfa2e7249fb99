"""The benchmark runner: ``python -m benchmarks [--quick] [--json PATH] [--plot PATH]``.

It compiles the C floor (floor.c with csrc/pr_posix.c), installs the peers
if they are missing (portpicker, ephemeral-port-reserve, port-for, and
matplotlib for --plot; each is optional and marked missing if it cannot be
had), runs every section in its own child process - in a private network
namespace when ``unshare`` allows it, so the "idle host" really is idle and
nothing touches the host's sysctls - and prints a table of medians and the
ratios within this run.  Timings are measured, never asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = {"portpicker": "portpicker", "ephemeral_port_reserve": "ephemeral-port-reserve",
         "port_for": "port-for"}

# Rows of the table: (key, label, the floor case doing the same system calls).
# The cycle rows are held against the C floor of the shim's calls for each
# hand-off.  A
# wildcard reserve(N) on an idle host binds at a random start and never
# dumps, so its floor is the N holder binds; on the busy host it is the C
# search (dump, search, binds).
ROWS = [
    ("python_floor", "Python floor: socket(); bind(('', 0)); close()", None),
    ("portpicker", "portpicker.pick_unused_port(), its memory cleared", None),
    ("portpicker_5000", "portpicker.pick_unused_port() after 5,000 calls", None),
    ("cycle", "r = reserve(1); s = r.socket(); s.close(); r.release() (default family)",
     "cycle_shim"),
    ("cycle6", "reserve(1)+bind+close+release, AF_INET6 (fd swap)", "cycle6_shim"),
    ("cycle4", "reserve(1)+bind+close+release, AF_INET (SO_REUSEPORT)", "cycle4_shim"),
    ("reserve_1", "reserve(1).release()", "hold_one_1"),
    ("reserve_16", "reserve(16).release(), idle host", "hold_16"),
    ("reserve_256", "reserve(256).release()", "hold_256"),
    ("reserve_1024", "reserve(1024).release()", "hold_1024"),
    ("reserve_10000", "reserve(10000).release()", "hold_10000"),
    ("bind_block", "bind+close from a reserve(256) block", None),
    ("bind_full_block", "bind+close, 255 of a reserve(256) block handed out", None),
    ("popen_floor", "subprocess.Popen(['true']).wait()", None),
    ("popen", "reserve(1) + Reservation.popen(['true']) by number + wait + release", None),
    ("fixture", "a test using the reserved_tcp_port fixture, less one without", None),
    ("persistent", "create_persistent(16)+delete", None),
    ("overlapped", "acquire+release via CompletionPort (per op)", None),
    ("aio", "await aio.reserve(1)+release (per op)", None),
    ("busy_wildcard_16", "busy host: reserve(16).release()", "busy_wildcard_16"),
    ("busy_wildcard_256", "busy host: reserve(256).release()", "busy_wildcard_256"),
    ("busy_dump", "busy host: the search's dump and parse", "busy_dump"),
    ("busy_dump_bound_only", "busy host: dump of bound-only sockets", "busy_dump_bound_only"),
]


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def ensure_installed(modules: dict[str, str]) -> None:
    """pip-install the missing ones into this environment; failures are tolerated."""
    missing = [pkg for mod, pkg in modules.items() if not _have(mod)]
    if missing:
        print(f"installing {' '.join(missing)} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        importlib.invalidate_caches()


def netns_prefix() -> list[str]:
    """A command prefix giving a child a private network namespace, or []."""
    if shutil.which("unshare") is None:
        return []
    for prefix in (["unshare", "--net"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


# What broke in this run (a compile, a measuring child); main() exits 1 if any.
PROBLEMS: list[str] = []


def build_floor(tmp: str) -> str | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    source = ROOT / "csrc" / "pr_posix.c"
    if cc is None or not source.exists():
        return None
    exe = os.path.join(tmp, "floor")
    proc = subprocess.run([cc, "-O2", "-o", exe, str(HERE / "floor.c"), str(source),
                           f"-I{ROOT / 'csrc'}"], capture_output=True, text=True)
    if proc.returncode:
        print(f"floor: compile failed:\n{proc.stderr}", file=sys.stderr)
        PROBLEMS.append("floor: compile failed")
        return None
    return exe


def child(cmd: list[str], prefix: list[str], env: dict | None = None) -> dict | str:
    """Run one measuring child; its JSON, or why it failed."""
    env = dict(os.environ, **(env or {}), PORTRESERVE_BENCH_NETNS="1" if prefix else "0")
    # The children import benchmarks.cases from this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, env=env,
                          timeout=900)
    if proc.returncode:
        PROBLEMS.append(f"{' '.join(cmd[-2:])}: {proc.stderr.strip()[-400:]}")
        return f"failed: {proc.stderr.strip()[-400:]}"
    return json.loads(proc.stdout)


def median(value) -> float | None:
    return statistics.median(value) if isinstance(value, list) and value else None


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "system": platform.platform()}


def merge(into: dict, key: str, result) -> None:
    """Add one pass's rounds to the ones before (an error string replaces all)."""
    if not isinstance(result, dict):
        into[key] = result
        return
    have = into.setdefault(key, {})
    if not isinstance(have, dict):
        return
    for case, value in result.items():
        if isinstance(value, list) and isinstance(have.get(case), list):
            have[case] += value
        elif isinstance(value, dict):
            merge(have, case, value)
        else:
            have.setdefault(case, value)


def run(quick: bool) -> dict:
    # Several passes, the implementations taking turns, so that a burst of
    # load from elsewhere on the machine hits all of them alike.
    passes, rounds, iters = (1, 3, 100) if quick else (5, 5, 1000)
    bound, time_wait = 5000, (2000 if quick else 4000)
    ensure_installed(PEERS)
    prefix = netns_prefix()
    py = [sys.executable, "-m", "benchmarks.cases"]
    load_before = os.getloadavg()
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="portreserve-bench-") as tmp:
        floor_exe = build_floor(tmp)
        for _ in range(passes):
            merge(raw, "floor", child([floor_exe, str(rounds), str(iters), "idle"], prefix)
                  if floor_exe else "missing: no C compiler or csrc/")
            for name in ("cffi", "ctypes"):
                merge(raw, name, child(
                    [*py, "backend", str(rounds), str(iters)], prefix,
                    {"PORTRESERVE_BACKEND": name,
                     "PORTRESERVE_STATE_DIR": os.path.join(tmp, f"state-{name}")}))
            merge(raw, "peers", child([*py, "peers", str(rounds), str(iters)], prefix))
        if prefix:
            raw["busy"] = child([*py, "busy", str(rounds), str(passes), str(bound),
                                 str(time_wait), *([floor_exe] if floor_exe else [])], prefix)
        else:
            raw["busy"] = "skipped: no private network namespace (unshare)"
    return {"machine": dict(machine(), loadavg_before=load_before,
                            loadavg_after=os.getloadavg()),
            "quick": quick, "passes": passes, "rounds": passes * rounds, "iters": iters,
            "netns": " ".join(prefix) or "none (host)", "raw": raw,
            "summary": summarize(raw)}


def _dict(value) -> dict:
    """A section's results, or {} where it failed or was skipped (a string)."""
    return value if isinstance(value, dict) else {}


def summarize(raw: dict) -> dict:
    """Medians per implementation and case, the ratios and the targets."""
    floor, busy = _dict(raw["floor"]), _dict(raw["busy"])
    med: dict[str, dict[str, float | None]] = {}
    for impl in ("floor", "cffi", "ctypes"):
        src, busy_src = _dict(raw[impl]), _dict(busy.get(impl))
        med[impl] = {}
        for key, _, floor_case in ROWS:
            if key.startswith("busy_"):
                value = busy_src.get(key.removeprefix("busy_"))
            elif impl == "floor":
                value = floor.get(floor_case) if floor_case else None
            else:
                value = src.get(key)
            med[impl][key] = median(value)
    extra = {f"floor_{k}": median(v) for k, v in floor.items()}
    extra.update({f"floor_busy_{k}": median(v) for k, v in _dict(busy.get("floor")).items()})
    peers = {name: median(v) for name, v in _dict(raw["peers"]).items()}

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    f = med["floor"]
    # name -> (goal, {backend: value}); a ratio, or ms where the goal says so.
    targets: dict[str, tuple[str, dict]] = {}

    def target(name, goal, fn):
        targets[name] = (goal, {impl: fn(med[impl]) for impl in ("cffi", "ctypes")})

    target("portpicker (memory cleared) / default cycle", ">= 3",
           lambda m: ratio(m["portpicker"], m["cycle"]))
    target("portpicker (after 5,000 calls) / default cycle", ">= 3",
           lambda m: ratio(m["portpicker_5000"], m["cycle"]))
    target("default cycle / Python floor (socket+bind(0)+close)", "<= 2",
           lambda m: ratio(m["cycle"], m["python_floor"]))
    target("reserve(1).release() / Python floor", "<= 1.5",
           lambda m: ratio(m["reserve_1"], m["python_floor"]))
    target("reserve(16) idle / C floor of 16 holder binds", "<= 1.5",
           lambda m: ratio(m["reserve_16"], f["reserve_16"]))
    for n in (256, 1024, 10000):
        target(f"reserve({n}) / its C floor", "<= 1.1",
               lambda m, n=n: ratio(m[f"reserve_{n}"], f[f"reserve_{n}"]))
    target("take from a full 256 block / from a fresh one", "about 1 (no growth)",
           lambda m: ratio(m["bind_full_block"], m["bind_block"]))
    target("busy host reserve(16), ms", "<= 2",
           lambda m: round(m["busy_wildcard_16"] / 1e3, 2) if m["busy_wildcard_16"] else None)
    target("popen row / plain Popen(['true']).wait()", "(reported)",
           lambda m: ratio(m["popen"], m["popen_floor"]))
    c, t = med["cffi"], med["ctypes"]
    for key in ("busy_wildcard_16", "busy_wildcard_256", "busy_dump", "cycle", "reserve_256"):
        targets[f"ctypes / cffi: {key}"] = (
            ">= 2 (busy search)" if key == "busy_wildcard_16" else "(reported)",
            {"cffi": ratio(t[key], c[key]), "ctypes": None})
    return {"medians_us": med, "floor_extra_us": extra, "peers_us": peers,
            "busy_state": {k: busy.get(k) for k in ("bound", "time_wait")},
            "targets": targets}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1e3:.2f} ms" if value >= 1000 else f"{value:.1f} µs"


def table(result: dict) -> str:
    s = result["summary"]
    med = s["medians_us"]
    lines = ["| operation | C floor | cffi | ctypes | ctypes/cffi | cffi/floor |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, label, _ in ROWS:
        f, c, t = med["floor"][key], med["cffi"][key], med["ctypes"][key]
        if c is None and t is None:  # say why: a section skipped, or not in this build
            why = next((v for v in (_dict(result["raw"].get(i)).get(key) for i in ("cffi", "ctypes"))
                        if isinstance(v, str)), "not measured")
            lines.append(f"| {label} | {_fmt(f)} | {why} | | | |")
            continue
        lines.append(f"| {label} | {_fmt(f)} | {_fmt(c)} | {_fmt(t)} | "
                     f"{f'{t / c:.2f}' if c and t else '-'} | "
                     f"{f'{c / f:.2f}' if c and f else '-'} |")
    lines += ["", "| C floor, other cases | median |", "| --- | ---: |"]
    for key, value in s["floor_extra_us"].items():
        lines.append(f"| {key} | {_fmt(value)} |")
    lines += ["", "| other peer (one free port) | median | / cffi default cycle |",
              "| --- | ---: | ---: |"]
    c6 = med["cffi"]["cycle"]
    for name in ("ephemeral_port_reserve", "port_for"):
        value = s["peers_us"].get(name)
        shown = _fmt(value) if value else f"missing ({result['raw']['peers'].get(name, '?')})" \
            if isinstance(result["raw"]["peers"], dict) else "missing"
        lines.append(f"| {name} | {shown} | {f'{value / c6:.2f}' if value and c6 else '-'} |")
    state = s["busy_state"]
    lines += ["", f"Busy host: {state.get('bound')} bound sockets, {state.get('time_wait')} "
              "in TIME_WAIT, in a private network namespace."]
    lines += ["", "| target (measured, not asserted) | goal | cffi | ctypes |",
              "| --- | --- | ---: | ---: |"]
    for name, (goal, values) in s["targets"].items():
        shown = ["-" if values.get(i) is None else str(values[i]) for i in ("cffi", "ctypes")]
        lines.append(f"| {name} | {goal} | {shown[0]} | {shown[1]} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> bool:
    ensure_installed({"matplotlib": "matplotlib"})
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib unavailable, no plot drawn", file=sys.stderr)
        return False
    med = result["summary"]["medians_us"]
    keys = [k for k, _, _ in ROWS if any(med[i][k] for i in ("cffi", "ctypes"))]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.27
    for n, impl in enumerate(("floor", "cffi", "ctypes")):
        ax.bar([i + (n - 1) * width for i in range(len(keys))],
               [med[impl][k] or 0 for k in keys], width,
               label="C floor (same system calls)" if impl == "floor" else impl)
    peers = result["summary"]["peers_us"]
    for n, (name, value) in enumerate(peers.items()):
        if value:  # labels spread along the line: two peers may be close
            ax.axhline(value, linestyle="--", linewidth=0.8, color="grey")
            ax.text(1 + 4 * n, value, name, fontsize=7, va="bottom")
    ax.set_yscale("log")
    ax.set_ylabel("median time per operation (µs, log scale)")
    ax.set_xticks(range(len(keys)), keys, rotation=35, ha="right", fontsize=8)
    m = result["machine"]
    ax.set_title(f"portreserve: C floor vs cffi vs ctypes (dashed: peers)\n"
                 f"{m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="C floor vs cffi vs ctypes vs peers; see docs/benchmarks.md.")
    parser.add_argument("--quick", action="store_true", help="few rounds (a smoke check, < 60 s)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--plot", metavar="PATH", help="draw a PNG plot here (needs matplotlib)")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("benchmarks: Linux only for now")
    if not _have("portreserve"):
        raise SystemExit("benchmarks: install the package first: pip install -e .")
    result = run(args.quick)
    m = result["machine"]
    load = "/".join(f"{x:.2f}" for x in m["loadavg_before"]) + " before, " + \
        "/".join(f"{x:.2f}" for x in m["loadavg_after"]) + " after"
    print(f"{m['cpu']} x{m['cpus']}, Linux {m['kernel']} ({m['system']}), "
          f"{m['implementation']} {m['python']}; load average (1/5/15 min) {load}; "
          f"namespace: {result['netns']}; median of {result['rounds']} rounds\n")
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.plot:
        plot(result, args.plot)
    if PROBLEMS:
        raise SystemExit("benchmarks: " + "; ".join(PROBLEMS))
