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
 * Returns count, or the index of the port that failed (with *err set);
 * then every holder made so far is closed again. */
int pr_hold(int family, int type, unsigned int start, unsigned int count,
            int *fds, int *err);

/* Bind one holder to a port the kernel chooses.  Returns the port. */
int pr_hold_any(int family, int type, int *fd, int *err);

/* Close every descriptor >= 0 of fds[0..count-1]. */
void pr_close_all(const int *fds, unsigned int count);

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
 * user's socket options and file flags onto the holder, then dup3() it over
 * the user's descriptor (dup2() and then the close-on-exec flag off Linux).
 * Only for the holder's family and wildcard address. */
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
