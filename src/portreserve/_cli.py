"""The `portreserve` command (docs/API.md section 4)."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys

import portreserve
from portreserve import lowlevel

from . import _args
from ._child import substitute


def _say(text: str = "") -> None:
    print(text, flush=True)


def _other_process_can_bind(port: int, udp: bool) -> bool:
    code = ("import socket,sys\n"
            f"s=socket.socket(socket.AF_INET, socket.SOCK_{'DGRAM' if udp else 'STREAM'})\n"
            "try: s.bind(('0.0.0.0', int(sys.argv[1])))\n"
            "except OSError: sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", code, str(port)]).returncode == 0


def _demo_runtime() -> None:
    _say("1. Wildcard runtime reservation of 8 TCP ports (SIO_ACQUIRE_PORT_RESERVATION, "
         "StartPort=0)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        inst = lowlevel.acquire_port_reservation(sock, 0, 8)
        last = inst.start_port + inst.number_of_ports - 1
        _say(f"   granted ports {inst.start_port}-{last}, token {inst.token:#018x}")
        _say("2. A second socket: SIO_ASSOCIATE_PORT_RESERVATION, then bind to port 0")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock_res:
            lowlevel.associate_port_reservation(sock_res, inst.token)
            lowlevel.bind_associated(sock_res, ("0.0.0.0", 0))
            _say(f"   port number allocated = {sock_res.getsockname()[1]}")
        blocked = not _other_process_can_bind(last, udp=False)
        _say(f"3. Another process binding port {last}: "
             f"{'refused, the port is reserved' if blocked else 'SUCCEEDED (unexpected)'}")
        lowlevel.release_port_reservation(sock, inst.token)
        _say(f"4. SIO_RELEASE_PORT_RESERVATION: released; another process can bind {last} now: "
             f"{_other_process_can_bind(last, udp=False)}")

    _say("5. Specific runtime reservation of UDP ports 5000-5019 (the pages' '5000 20' example)")
    try:
        res = portreserve.reserve(20, start=5000, protocol="udp")
    except portreserve.ReservationConflict as exc:
        _say(f"   5000-5019 is not free here ({exc.strerror}); taking any free 20 instead")
        res = portreserve.reserve(20, protocol="udp")
    with res:
        _say(f"   granted {res!r}")
        socks = [res.socket() for _ in res.ports]
        _say(f"   {len(socks)} UDP sockets bound from it: ports "
             f"{socks[0].getsockname()[1]}..{socks[-1].getsockname()[1]}")
        try:
            res.socket()
        except portreserve.ReservationExhausted:
            _say("   one more: ReservationExhausted, every port is in use")
        port = socks[7].getsockname()[1]
        socks[7].close()
        socks[7] = res.socket()
        _say(f"   closed the socket on {port}; the next socket gets it back: "
             f"{socks[7].getsockname()[1]}")
        for s in socks:
            s.close()
    _say(f"6. Released; the block is free again: {res!r}")


def _demo_persistent() -> None:
    _say("7. Persistent reservation (CreatePersistentTcpPortReservation; needs admin/CAP_NET_ADMIN)")
    probe = portreserve.reserve(10)  # find ten free ports, then let them go
    start = probe.start
    probe.close()
    token = portreserve.create_persistent(start, 10)
    try:
        _say(f"   created TCP {start}-{start + 9}, token {token:#018x}; "
             f"lookup gives {portreserve.lookup_persistent(start, 10):#018x}")
        with socket.socket() as sock:
            port = portreserve.bind(sock, token)
            _say(f"   a socket bound from the persistent token: port {port}")
    finally:
        portreserve.delete_persistent(start, 10)
    _say("   deleted")


def _cmd_demo(args: argparse.Namespace) -> None:
    _say(f"portreserve {portreserve.__version__} on {sys.platform}, backend {portreserve.backend}")
    _demo_runtime()
    if args.persistent:
        _demo_persistent()
    _say("done")


def _command(args: argparse.Namespace) -> list[str]:
    line: list[str] = args.command_line
    return line[1:] if line[:1] == ["--"] else line


def _cmd_run(args: argparse.Namespace) -> int:
    command = _command(args)
    res = portreserve.reserve(args.count, start=args.start,
                              protocol="udp" if args.udp else "tcp")
    with res:
        try:
            proc = res.popen(command, listen_fds=args.listen_fds)
        except (FileNotFoundError, PermissionError) as exc:
            # The shell's statuses for a command not found / not runnable.
            print(f"portreserve: run: {command[0]}: {exc.strerror}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
        forwarded = (signal.SIGINT, signal.SIGTERM)
        previous = [signal.signal(sig, lambda sig, _: proc.send_signal(sig)) for sig in forwarded]
        try:
            code = proc.wait()
        finally:
            for sig, handler in zip(forwarded, previous):
                signal.signal(sig, handler)
    # A child killed by a signal: the shell's convention.
    return code if code >= 0 else 128 - code


def _cmd_reserve(args: argparse.Namespace) -> None:
    res = portreserve.reserve(args.count, start=args.start,
                              protocol="udp" if args.udp else "tcp")
    with res:
        _say(f"{res.protocol.value} {res.start}-{res.start + res.count - 1} token={res.token:#x}")
        if not args.hold:
            print("portreserve: released as this command exits; the ports are free for anyone "
                  "now. To give them to a program: portreserve run -- CMD {port}",
                  file=sys.stderr)
        else:
            _say("holding: no program can bind these ports, yours included, until Ctrl-C "
                 "releases them (portreserve run -- CMD {port} gives them to a program)")
            # Ended by a signal as a killed program is, and as `run` ends when
            # its child is killed: released, then 128 + the signal's number
            # (SIGINT: KeyboardInterrupt, 130 in main).
            previous = signal.signal(signal.SIGTERM, _terminated)
            try:
                signal.pause() if hasattr(signal, "pause") else input()
            finally:
                signal.signal(signal.SIGTERM, previous)


def _terminated(*_: object) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def _print_persistent(r: portreserve.PersistentReservation) -> None:
    state = "applied" if r.applied else "not applied (run: portreserve persistent restore)"
    _say(f"{r.protocol.value} {r.start}-{r.start + r.count - 1} token={r.token:#x} {state}")


def _cmd_persistent(args: argparse.Namespace) -> None:
    protocol = "udp" if args.udp else "tcp"
    if args.action == "add":
        token = portreserve.create_persistent(args.start, args.count, protocol=protocol)
        _say(f"created {protocol} {args.start}-{args.start + args.count - 1} token={token:#x}")
    elif args.action == "delete":
        portreserve.delete_persistent(args.start, args.count, protocol=protocol)
        _say(f"deleted {protocol} {args.start}-{args.start + args.count - 1}")
    elif args.action == "lookup":
        _say(f"{portreserve.lookup_persistent(args.start, args.count, protocol=protocol):#x}")
    elif args.action == "list":
        for r in portreserve.list_persistent(protocol=args.only):
            _print_persistent(r)
    else:
        from ._engine import engine
        for r in engine.restore():
            _print_persistent(r)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portreserve", description="Real TCP/UDP port reservations.")
    parser.add_argument("--version", action="version",
                        version=f"portreserve {portreserve.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the reference pages' examples end to end")
    demo.add_argument("--persistent", action="store_true",
                      help="add the persistent example (needs admin / CAP_NET_ADMIN)")
    demo.set_defaults(run=_cmd_demo)

    run = sub.add_parser(
        "run", help="reserve ports and run CMD with them; exits with CMD's status",
        description="Reserve ports and run CMD so that it gets them: {port}, {port0}, "
                    "{port1}... in its arguments become the ports, and its environment has "
                    "PORT and PORTRESERVE_PORTS=START-END.  CMD binds the ports by number "
                    "(nobody else can take them, where README says so), or with "
                    "--listen-fds gets them as bound sockets 3, 4... (LISTEN_FDS).  The "
                    "ports are released when CMD exits; SIGINT and SIGTERM are passed on "
                    "to it.",
        usage="portreserve run [--count N] [--start P] [--udp] [--listen-fds] -- CMD [ARG...]")
    run.add_argument("--count", type=int, default=1, metavar="N",
                     help="number of consecutive ports (default 1)")
    run.add_argument("--start", type=int, default=0, metavar="P",
                     help="first port (default: any free block)")
    run.add_argument("--udp", action="store_true", help="UDP ports (default TCP)")
    run.add_argument("--listen-fds", action="store_true",
                     help="pass the ports as bound sockets (systemd socket activation)")
    run.add_argument("command_line", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")
    run.set_defaults(run=_cmd_run)

    res = sub.add_parser(
        "reserve", help="reserve ports, print them, and release them when this command exits",
        description="Reserve COUNT consecutive ports and print them.  The ports are released "
                    "as soon as this command exits: without --hold that is at once, so the "
                    "printed ports are free again and anyone may take them.  --hold keeps "
                    "them reserved until Ctrl-C (exit status 130) or SIGTERM (143), but then "
                    "nobody can bind them, the program you meant them for included.  To give "
                    "ports to a program, use: portreserve run -- CMD {port}.  Bad arguments "
                    "exit with status 2, failures with 1.")
    res.add_argument("count", type=int, metavar="COUNT")
    res.add_argument("--start", type=int, default=0, metavar="P",
                     help="first port (default: any free block)")
    res.add_argument("--udp", action="store_true", help="reserve UDP ports (default TCP)")
    res.add_argument("--hold", action="store_true",
                     help="keep the block reserved (blocked for every program) until Ctrl-C "
                          "(status 130) or SIGTERM (143) releases it")
    res.set_defaults(run=_cmd_reserve)

    per = sub.add_parser("persistent", help="host-wide reservations that outlive the process")
    acts = per.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "create a persistent reservation"),
                         ("delete", "delete a persistent reservation"),
                         ("lookup", "print the token of a persistent reservation")):
        p = acts.add_parser(action, help=text)
        p.add_argument("start", type=int, metavar="START")
        p.add_argument("count", type=int, metavar="COUNT")
        p.add_argument("--udp", action="store_true", help="UDP (default TCP)")
    lst = acts.add_parser("list", help="list persistent reservations (both protocols)")
    only = lst.add_mutually_exclusive_group()
    only.add_argument("--tcp", dest="only", action="store_const", const="tcp")
    only.add_argument("--udp", dest="only", action="store_const", const="udp")
    acts.add_parser("restore", help="re-apply saved reservations (run at boot)")
    per.set_defaults(run=_cmd_persistent, udp=False)
    # Each command's own parser, for its usage errors (the innermost one wins).
    for p in [*sub.choices.values(), *acts.choices.values()]:
        p.set_defaults(parser=p)
    return parser


def _check(args: argparse.Namespace) -> None:
    """Raise InvalidParameter for a bad value of ``args``, before anything is done."""
    if args.command in ("reserve", "run"):
        _args.block("reserve", args.start, args.count, wildcard=True)
    if args.command == "run":
        if not _command(args):
            raise portreserve.InvalidParameter("run: no command given (portreserve run -- CMD ...)")
        substitute(_command(args), [0] * args.count)  # a {portN} past the block
    if args.command == "persistent" and args.action in ("add", "delete", "lookup"):
        call = "create" if args.action == "add" else args.action
        _args.persistent_block(f"{call}_persistent", args.start, args.count)


def main(argv: list[str] | None = None) -> int:
    """Run the command; its exit status: 2 for bad command-line input (a usage
    error, as argparse's own), 1 for a failure, else the command's own."""
    # parse_args would let the top-level parser report a subcommand's unknown
    # option, with the top-level usage.
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from ._backend import refused
    if refused is not None:  # a usage error, as argparse's own (status 2)
        print(f"portreserve: {refused}", file=sys.stderr)
        return 2
    try:
        _check(args)
    except portreserve.InvalidParameter as exc:
        args.parser.error(exc.strerror)
    try:
        return args.run(args) or 0
    except (portreserve.PortReservationError, OSError) as exc:
        print(f"portreserve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a child took over its signals
        print(file=sys.stderr)
        return 130
