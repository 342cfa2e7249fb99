/* POSIX half of the portreserve shim: Linux, and macOS where noted.  This
 * text is also the CFFI cdef, so it holds only declarations cffi can parse
 * (no #include, no macros).
 *
 * Every call returns -1 on failure with the errno of the failing system call
 * in *err, as captured right after that call.  Descriptors are close-on-exec.
 * A holder is a socket bound to one port and never listened on: while it is
 * open nobody else can bind that port (README.md, "What is enforced").
 */

/* Bind holders for ports start .. start+count-1 into fds[0..count-1].
 * Returns count, or the index i of the port that failed (with *err set);
 * then every holder made so far is closed again and fds[0..i-1] are -1
 * (fds[i..count-1] are not touched), so nothing in fds names a closed
 * descriptor.  The ctypes layer does the same. */
int pr_hold(int family, int type, unsigned int start, unsigned int count,
            int *fds, int *err);

/* Bind one holder to a port the kernel chooses, explicitly (so that
 * pr_readopt keeps it bound).  Returns the port. */
int pr_hold_any(int family, int type, int *fd, int *err);

/* reserve(1): one holder (into *fd) on a port of lo..hi (the ephemeral
 * range) that ip_local_reserved_ports does not list, picked at random from
 * seed and bound explicitly (so that pr_readopt keeps it bound).
 * reserved_fd is that sysctl kept open (read with pread), or -1 for none.
 * Returns the port; 0 when every one of a few tries collided, or the list
 * is longer or other than the kernel writes (the caller then searches); -1
 * with *err. */
int pr_hold_one(int family, int type, unsigned int lo, unsigned int hi, int reserved_fd,
                unsigned int seed, int *fd, int *err);

/* Close every descriptor >= 0 of fds[0..count-1], setting each to -1. */
void pr_close_all(int *fds, unsigned int count);

/* Set map[p] = 1 for every port p that has a socket of `protocol`
 * (IPPROTO_TCP or IPPROTO_UDP) bound in this network namespace, IPv4 and IPv6,
 * through a NETLINK_SOCK_DIAG dump (TCP: one request for both families).
 * which = 0: sockets in every state, TIME_WAIT included; 1: all of those but
 * TCP sockets that are only bound (never listened on or connected, as
 * holders), whose part of the dump costs the most; 2: those alone (nothing
 * to do for UDP).  map has 65536 entries.  ENOSYS off Linux. */
int pr_bound_ports(int protocol, int which, unsigned char *map, int *err);

/* Parse len bytes of one reply to that dump: set map[p] = 1 for the source
 * port p of each socket message.  Returns 1 at the end of the dump, 0 when
 * more replies follow, -1 with *err set for an error message (its errno) or
 * a malformed one (EPROTO).  Safe on any bytes; buf needs no alignment. */
int pr_parse_diag(const unsigned char *buf, size_t len, unsigned char *map, int *err);

/* Hand the holder's port to the user's fresh socket with no window: copy the
 * user's socket options (every one of the list in pr_posix.c whose value
 * differs from the holder's) and file flags onto the holder, then dup3() it
 * over the user's descriptor (dup2() and then the close-on-exec flag off
 * Linux).  Only for the holder's family and wildcard address.  On failure
 * the holder may carry some of the user's options: pr_readopt it. */
int pr_handoff_dup(int holder, int user, int *err);

/* Hand the holder's port to the user's socket bound to another address or
 * family: SO_REUSEPORT on both for the one bind.  The holder stays bound; the
 * caller closes it or keeps it to close the port's other addresses.  When
 * private_uid >= 0 both sockets are owned by that uid during the bind (needs
 * CAP_CHOWN; skipped without it).  addr is 4 (AF_INET) or 16 (AF_INET6)
 * bytes. */
int pr_handoff_reuseport(int holder, int user, int family,
                         const unsigned char *addr, unsigned int port,
                         int private_uid, int *err);

/* IP_LOCAL_PORT_RANGE (Linux 6.3+): where bind(port 0) and connect() may
 * pick a port for this socket.  ENOPROTOOPT off Linux. */
int pr_set_local_port_range(int fd, unsigned int lo, unsigned int hi, int *err);

/* The range the kernel picks automatic (ephemeral) ports from:
 * ip_local_port_range on Linux, net.inet.ip.portrange.first/last on macOS. */
int pr_port_range(unsigned int *lo, unsigned int *hi, int *err);

/* Make fd, a socket that held its port for a user (a holder handed out, or
 * lent to a child), a holder again without ever unbinding the port: reuse
 * options and device cleared, listen() or connect() undone, blocking and
 * close-on-exec, a UDP one deaf and drained; with reset_options also every
 * option of the hand-off list back to a fresh holder's value.  Needs a port bound
 * explicitly (not by bind(port 0)).  EISCONN for a TCP socket with a peer,
 * which cannot be undone without resetting the connection: pr_hold_beside. */
int pr_readopt(int fd, int reset_options, int *err);

/* Bind a new holder (into *out) to `port` beside fd, a socket bound there
 * that does not listen, before fd is closed.  SO_REUSEADDR is set on both
 * for that one bind; fd keeps its own setting. */
int pr_hold_beside(int fd, int family, int type, unsigned int port, int *out, int *err);

/* Hold `port` again (into *out) after the user's socket on it was closed,
 * TIME_WAIT connections it left included (see pr_posix.c). */
int pr_rehold(int family, int type, unsigned int port, int *out, int *err);

/* Make a UDP holder that is handed out as the user's socket receive again:
 * the drop-all filter removed (off Linux: what queued up drained) and
 * SO_RCVBUF set to rcvbuf (a fresh socket's size, as setsockopt takes it). */
int pr_open_input(int fd, int rcvbuf, int *err);

/* Hold every signal for the calling thread, saving its mask in state (136
 * bytes: a flag, then the mask); pr_restore_signals puts it back, once,
 * and does nothing if nothing was saved.  Python runs its signal handlers
 * after a call returns: while they are held no handler's exception can
 * strike between two steps that must go together. */
int pr_hold_signals(unsigned char *state, int *err);
int pr_restore_signals(unsigned char *state, int *err);
