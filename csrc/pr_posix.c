/* POSIX system calls of portreserve; declarations and contract in pr_posix.h.
 * Written for Linux; the parts Linux alone has are under __linux__, and the
 * rest builds on macOS too (README.md, "On macOS"). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#ifdef __linux__
#include <net/if.h>
#include <linux/filter.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51 /* Linux 6.3 */
#endif
#else
#include <sys/sysctl.h>
#endif

#include "pr_posix.h"

static int fail(int *err)
{
    *err = errno;
    return -1;
}

/* A UDP holder must not collect datagrams sent to its port: a filter that
 * accepts zero bytes drops them all, and a minimal buffer bounds the rest. */
static int drop_input(int fd)
{
    int small = 1;
#ifdef __linux__
    static struct sock_filter drop_all = BPF_STMT(BPF_RET | BPF_K, 0);
    struct sock_fprog prog = {1, &drop_all};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
        return -1;
#endif
    /* Elsewhere the small buffer alone bounds them; the hand-off drains it. */
    return setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
}

static int cloexec_socket(int family, int type, int protocol)
{
#ifdef SOCK_CLOEXEC
    return socket(family, type | SOCK_CLOEXEC, protocol);
#else
    int fd = socket(family, type, protocol);
    if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        close(fd);
        return -1;
    }
    return fd;
#endif
}

static int open_holder(int family, int type)
{
    int fd = cloexec_socket(family, type, 0);
    int off = 0;
    if (fd < 0)
        return -1;
    /* Dual-stack: one [::] holder blocks IPv4 and IPv6 binds alike. */
    if ((family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) < 0) ||
        (type == SOCK_DGRAM && drop_input(fd) < 0)) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static int bind_port(int fd, int family, const unsigned char *addr, unsigned int port)
{
    if (family == AF_INET6) {
        struct sockaddr_in6 sa;
        memset(&sa, 0, sizeof sa);
        sa.sin6_family = AF_INET6;
        sa.sin6_port = htons((unsigned short)port);
        if (addr)
            memcpy(&sa.sin6_addr, addr, 16);
        return bind(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((unsigned short)port);
        if (addr)
            memcpy(&sa.sin_addr, addr, 4);
        return bind(fd, (struct sockaddr *)&sa, sizeof sa);
    }
}

int pr_hold(int family, int type, unsigned int start, unsigned int count,
            int *fds, int *err)
{
    unsigned int i;
    for (i = 0; i < count; i++) {
        int fd = open_holder(family, type);
        if (fd < 0 || bind_port(fd, family, NULL, start + i) < 0) {
            *err = errno;
            if (fd >= 0)
                close(fd);
            pr_close_all(fds, i);
            for (unsigned int j = 0; j < i; j++) fds[j] = -1;  /* no stale numbers */
            return (int)i;
        }
        fds[i] = fd;
    }
    return (int)count;
}

int pr_hold_any(int family, int type, int *fd, int *err)
{
    /* The kernel's choice, read from a probe, then bound explicitly: only an
     * explicitly bound port stays bound through shutdown() and
     * connect(AF_UNSPEC), which pr_readopt relies on.  Until this returns the
     * port is not reserved, so losing it to a racer only means another try. */
    int tries;
    for (tries = 0; tries < 16; tries++) {
        struct sockaddr_in6 sa;
        socklen_t len = sizeof sa;
        /* The probe needs no holder options: a port it finds that the
         * dual-stack holder cannot take only costs another try. */
        int port, h, probe = cloexec_socket(family, type, 0);
        if (probe < 0)
            return fail(err);
        if (bind_port(probe, family, NULL, 0) < 0 ||
            getsockname(probe, (struct sockaddr *)&sa, &len) < 0) {
            *err = errno;
            close(probe);
            return -1;
        }
        /* sin_port and sin6_port sit at the same offset. */
        port = ntohs(sa.sin6_port);
        close(probe);
        h = open_holder(family, type);
        if (h < 0)
            return fail(err);
        if (bind_port(h, family, NULL, (unsigned int)port) == 0) {
            *fd = h;
            return port;
        }
        *err = errno;
        close(h);
        if (*err != EADDRINUSE)
            return -1;
    }
    return -1;
}

/* 1 if port is in the kernel's port-list text ("8080,9000-9010\n"), 0 if
 * not, -1 for text the kernel does not write.  Reads only text[0..len-1]. */
static int listed(const char *text, size_t len, unsigned int port)
{
    size_t i = 0;
    if (len && text[len - 1] == '\n')
        len--;
    while (i < len) {
        unsigned long span[2] = {0, 0};
        int part;
        for (part = 0; part < 2; part++) {
            size_t digits = 0;
            while (i < len && text[i] >= '0' && text[i] <= '9' && digits++ < 5)
                span[part] = span[part] * 10 + (unsigned long)(text[i++] - '0');
            if (!digits || span[part] > 65535)
                return -1;
            if (part == 1 || i == len || text[i] != '-') {
                if (part == 0)
                    span[1] = span[0];
                break;
            }
            i++; /* the '-' of a range */
        }
        if (i < len && text[i++] != ',')
            return -1;
        if (span[0] <= port && port <= span[1])
            return 1;
    }
    return 0;
}

/* Ports reserve(1) tries at random before the caller searches. */
#define PR_ONE_PORT_TRIES 8

int pr_hold_one(int family, int type, unsigned int lo, unsigned int hi, int reserved_fd,
                unsigned int seed, int *fd, int *err)
{
    char text[4096];
    ssize_t len = 0;
    int tries;
    if (lo < 1 || hi > 65535 || hi < lo) {
        *err = EINVAL;
        return -1;
    }
    if (reserved_fd >= 0) {
        len = pread(reserved_fd, text, sizeof text, 0);
        if (len < 0)
            return fail(err);
        if (len == (ssize_t)sizeof text)
            return 0; /* longer than we read: the caller's search reads it all */
    }
    if (!seed)
        seed = 1;
    for (tries = 0; tries < PR_ONE_PORT_TRIES; tries++) {
        unsigned int port;
        int h, in;
        seed ^= seed << 13; /* xorshift32 */
        seed ^= seed >> 17;
        seed ^= seed << 5;
        port = lo + seed % (hi - lo + 1);
        in = listed(text, (size_t)len, port);
        if (in < 0)
            return 0;
        if (in)
            continue;
        h = open_holder(family, type);
        if (h < 0)
            return fail(err);
        if (bind_port(h, family, NULL, port) == 0) {
            *fd = h;
            return (int)port;
        }
        *err = errno;
        close(h);
        if (*err != EADDRINUSE && *err != EACCES)
            return -1;
    }
    return 0;
}

void pr_close_all(int *fds, unsigned int count)
{
    unsigned int i;
    for (i = 0; i < count; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1; /* never closed twice, whoever calls again */
        }
}

/* Message types of a sock_diag dump reply: SOCK_DIAG_BY_FAMILY answers a
 * per-family request, TCPDIAG_GETSOCK the older one that covers both
 * families in one walk (TCP only). */
#define PR_SOCK_DIAG_BY_FAMILY 20
#define PR_TCPDIAG_GETSOCK 18
/* TCP sockets bound and never listened on or connected (TCP_BOUND_INACTIVE,
 * Linux 6.9+).  Dumping them walks the kernel's whole bind table, every
 * namespace's: that walk cost more than the dump of all other states
 * together, so the search asks for them apart, and only when needed. */
#define PR_TCPF_BOUND_INACTIVE (1u << 13)

int pr_parse_diag(const unsigned char *buf, size_t len, unsigned char *map, int *err)
{
    size_t pos = 0;
    /* Every field is copied out with memcpy: buf need not be aligned, and no
     * read goes past a message's own length or past len. */
    while (len - pos >= 16) {
        uint32_t mlen;
        uint16_t type, sport;
        int32_t code;
        memcpy(&mlen, buf + pos, 4);
        memcpy(&type, buf + pos + 4, 2);
        if (mlen < 16 || mlen > len - pos) {
            *err = EPROTO;
            return -1;
        }
        if (type == 3) /* NLMSG_DONE */
            return 1;
        if (type == 2) { /* NLMSG_ERROR: a negative errno after the header */
            if (mlen < 20) {
                *err = EPROTO;
                return -1;
            }
            memcpy(&code, buf + pos + 16, 4);
            /* Only a real errno is passed on (INT_MIN has no positive twin). */
            *err = code < 0 && code > -4096 ? -code : EPROTO;
            return -1;
        }
        if (type == PR_SOCK_DIAG_BY_FAMILY || type == PR_TCPDIAG_GETSOCK) {
            /* inet_diag_msg: family, state, timer, retrans, then the
             * source port in network order. */
            if (mlen < 22) {
                *err = EPROTO;
                return -1;
            }
            memcpy(&sport, buf + pos + 20, 2);
            map[ntohs(sport)] = 1;
        }
        if (((size_t)mlen + 3) / 4 * 4 >= len - pos)
            break;
        pos += ((size_t)mlen + 3) / 4 * 4;
    }
    return 0;
}

#ifdef __linux__
/* Send one dump request and parse the replies into map. */
static int dump(int nl, const void *req, size_t size, unsigned char *map, int *err)
{
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    /* 32 KiB: the most the kernel puts in one dump message, so the dump
     * resumes (and walks its tables again from a saved bucket) less often. */
    long buf[32768 / sizeof(long)];
    if (sendto(nl, req, size, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return fail(err);
    for (;;) {
        ssize_t n = recv(nl, buf, sizeof buf, 0);
        int rc;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(err);
        }
        if (n == 0) { /* the kernel never ends a dump without NLMSG_DONE */
            *err = EPROTO;
            return -1;
        }
        rc = pr_parse_diag((const unsigned char *)buf, (size_t)n, map, err);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
}

int pr_bound_ports(int protocol, int which, unsigned char *map, int *err)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 req;
    } msg;
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req req;
    } tcp;
    int nl, rc;
    if (which == 2 && protocol != IPPROTO_TCP)
        return 0; /* no such UDP sockets: the other dumps have them all */
    nl = cloexec_socket(AF_NETLINK, SOCK_DGRAM, NETLINK_SOCK_DIAG);
    if (nl < 0)
        return fail(err);
    if (protocol == IPPROTO_TCP) {
        /* One walk of the kernel's tables for IPv4 and IPv6 together. */
        memset(&tcp, 0, sizeof tcp);
        tcp.nlh.nlmsg_len = sizeof tcp;
        tcp.nlh.nlmsg_type = PR_TCPDIAG_GETSOCK;
        tcp.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        tcp.req.idiag_states = which == 2   ? PR_TCPF_BOUND_INACTIVE
                               : which == 1 ? ~PR_TCPF_BOUND_INACTIVE
                                            : ~0u;
        rc = dump(nl, &tcp, sizeof tcp, map, err);
    } else {
        memset(&msg, 0, sizeof msg);
        msg.nlh.nlmsg_len = sizeof msg;
        msg.nlh.nlmsg_type = PR_SOCK_DIAG_BY_FAMILY;
        msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.req.sdiag_family = AF_INET;
        msg.req.sdiag_protocol = (unsigned char)protocol;
        msg.req.idiag_states = ~0u;
        rc = dump(nl, &msg, sizeof msg, map, err);
        if (rc == 0) {
            msg.req.sdiag_family = AF_INET6;
            rc = dump(nl, &msg, sizeof msg, map, err);
        }
    }
    close(nl);
    return rc;
}
#else
int pr_bound_ports(int protocol, int which, unsigned char *map, int *err)
{
    (void)protocol;
    (void)which;
    (void)map;
    *err = ENOSYS;
    return -1;
}
#endif

/* Options a user may set on a fresh socket before binding it; the holder
 * takes over every one whose value differs from its own before it replaces
 * the user's descriptor.  Values are copied as bytes, whatever their type
 * (an int, a struct timeval, a device or congestion-control name). */
struct sockopt_name {
    int level, name;
};
static const struct sockopt_name copied[] = {
    {SOL_SOCKET, SO_REUSEADDR}, {SOL_SOCKET, SO_REUSEPORT}, {SOL_SOCKET, SO_KEEPALIVE},
    {SOL_SOCKET, SO_BROADCAST}, {SOL_SOCKET, SO_OOBINLINE}, {SOL_SOCKET, SO_SNDBUF},
    {SOL_SOCKET, SO_RCVLOWAT},  {SOL_SOCKET, SO_LINGER},    {SOL_SOCKET, SO_RCVTIMEO},
    {SOL_SOCKET, SO_SNDTIMEO},  {SOL_SOCKET, SO_DONTROUTE}, {SOL_SOCKET, SO_TIMESTAMP},
    {IPPROTO_IP, IP_TOS},       {IPPROTO_IP, IP_TTL},       {IPPROTO_IP, IP_MULTICAST_TTL},
    {IPPROTO_IP, IP_MULTICAST_LOOP}, {IPPROTO_IP, IP_RECVTTL}, {IPPROTO_IP, IP_RECVTOS},
    {IPPROTO_IPV6, IPV6_UNICAST_HOPS}, {IPPROTO_IPV6, IPV6_TCLASS},
    {IPPROTO_IPV6, IPV6_MULTICAST_HOPS}, {IPPROTO_IPV6, IPV6_MULTICAST_LOOP},
    {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_TCP, TCP_MAXSEG},  {IPPROTO_TCP, TCP_KEEPINTVL},
    {IPPROTO_TCP, TCP_KEEPCNT},
#ifdef TCP_KEEPIDLE
    {IPPROTO_TCP, TCP_KEEPIDLE},
#else
    {IPPROTO_TCP, TCP_KEEPALIVE}, /* macOS's name for the idle time */
#endif
#ifdef __linux__
    {SOL_SOCKET, SO_PRIORITY},  {SOL_SOCKET, SO_MARK},      {SOL_SOCKET, SO_BINDTODEVICE},
    {SOL_SOCKET, SO_TIMESTAMPNS}, {SOL_SOCKET, SO_BUSY_POLL}, {SOL_SOCKET, SO_INCOMING_CPU},
    {SOL_SOCKET, SO_MAX_PACING_RATE}, {SOL_SOCKET, SO_PASSCRED}, {SOL_SOCKET, SO_RXQ_OVFL},
    {SOL_SOCKET, 60 /* SO_ZEROCOPY */},
    {IPPROTO_IP, IP_FREEBIND},  {IPPROTO_IP, IP_TRANSPARENT}, {IPPROTO_IP, IP_MTU_DISCOVER},
    {IPPROTO_IP, IP_RECVERR},   {IPPROTO_IP, IP_PKTINFO},   {IPPROTO_IP, IP_MULTICAST_ALL},
    {IPPROTO_IP, IP_NODEFRAG},  {IPPROTO_IP, IP_RECVORIGDSTADDR},
    {IPPROTO_IPV6, IPV6_RECVPKTINFO}, {IPPROTO_IPV6, IPV6_RECVTCLASS},
    {IPPROTO_IPV6, IPV6_MTU_DISCOVER}, {IPPROTO_IPV6, IPV6_RECVERR},
    {IPPROTO_IPV6, 78 /* IPV6_FREEBIND */}, {IPPROTO_IPV6, IPV6_TRANSPARENT},
    {IPPROTO_IPV6, IPV6_RECVORIGDSTADDR},
    {IPPROTO_TCP, TCP_CORK},    {IPPROTO_TCP, TCP_SYNCNT},  {IPPROTO_TCP, TCP_LINGER2},
    {IPPROTO_TCP, TCP_DEFER_ACCEPT}, {IPPROTO_TCP, TCP_WINDOW_CLAMP},
    {IPPROTO_TCP, TCP_QUICKACK}, {IPPROTO_TCP, TCP_CONGESTION},
    {IPPROTO_TCP, TCP_USER_TIMEOUT}, {IPPROTO_TCP, TCP_FASTOPEN},
    {IPPROTO_TCP, 30 /* TCP_FASTOPEN_CONNECT */}, {IPPROTO_TCP, TCP_NOTSENT_LOWAT},
    {IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS},
    /* Numbers from linux/udp.h, which older C libraries' headers lack. */
    {IPPROTO_UDP, 1 /* UDP_CORK */}, {IPPROTO_UDP, 103 /* UDP_SEGMENT */},
    {IPPROTO_UDP, 104 /* UDP_GRO */},
#endif
};

/* Linux's getsockopt reports buffer sizes doubled; setsockopt doubles again. */
#ifdef __linux__
#define BUFSIZE_TO_SET(reported) ((reported) / 2)
#else
#define BUFSIZE_TO_SET(reported) (reported)
#endif

static int applies(int level, int family, int type)
{
    if (level == IPPROTO_TCP)
        return type == SOCK_STREAM;
    if (level == IPPROTO_UDP)
        return type == SOCK_DGRAM;
    if (level == IPPROTO_IPV6)
        return family == AF_INET6;
#ifdef __linux__
    return 1; /* IP options also rule an AF_INET6 socket's IPv4 traffic */
#else
    return level != IPPROTO_IP || family == AF_INET;
#endif
}

static int copy_options(int from, int to, int family, int type)
{
    unsigned int i;
    int a, b, flags;
    socklen_t len;

    for (i = 0; i < sizeof copied / sizeof copied[0]; i++) {
        unsigned char va[64], vb[64];
        socklen_t la = sizeof va, lb = sizeof vb;
        if (!applies(copied[i].level, family, type))
            continue;
        memset(va, 0, sizeof va);
        memset(vb, 0, sizeof vb);
        /* An option this kernel lacks is one nobody set. */
        if (getsockopt(from, copied[i].level, copied[i].name, va, &la) < 0) {
            if (errno == ENOPROTOOPT || errno == EOPNOTSUPP || errno == EINVAL)
                continue;
            return -1;
        }
        if (getsockopt(to, copied[i].level, copied[i].name, vb, &lb) < 0)
            return -1;
        if (la == lb && memcmp(va, vb, la) == 0)
            continue;
        if (copied[i].level == SOL_SOCKET && copied[i].name == SO_SNDBUF) {
            memcpy(&a, va, sizeof a);
            a = BUFSIZE_TO_SET(a);
            memcpy(va, &a, sizeof a);
        }
        if (setsockopt(to, copied[i].level, copied[i].name, va, la) < 0)
            return -1;
    }
    if (type == SOCK_DGRAM) {
#ifdef __linux__
        /* Undo drop_input(): the user's socket receives normally.  The
         * kernel wants an int-sized option even though it ignores it. */
        int unused = 0;
        if (setsockopt(to, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused) < 0 &&
            errno != ENOENT) /* none attached (pr_readopt's reset) */
            return -1;
#else
        /* No filter here: drop what queued up while the port was held. */
        char byte;
        while (recv(to, &byte, 1, MSG_DONTWAIT) >= 0 || errno == EINTR)
            ;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
#endif
    }
    /* Setting SO_RCVBUF switches TCP receive-buffer autotuning off for good,
     * so a TCP holder takes the user's size only when it differs; a UDP
     * holder's was shrunk by drop_input() and is always restored. */
    len = sizeof a;
    if (getsockopt(from, SOL_SOCKET, SO_RCVBUF, &a, &len) < 0)
        return -1;
    len = sizeof b;
    if (type == SOCK_STREAM && getsockopt(to, SOL_SOCKET, SO_RCVBUF, &b, &len) < 0)
        return -1;
    if (type != SOCK_STREAM || a != b) {
        a = BUFSIZE_TO_SET(a);
#ifdef __linux__
        if (setsockopt(to, SOL_SOCKET, SO_RCVBUFFORCE, &a, sizeof a) < 0 &&
            setsockopt(to, SOL_SOCKET, SO_RCVBUF, &a, sizeof a) < 0)
            return -1;
#else
        if (setsockopt(to, SOL_SOCKET, SO_RCVBUF, &a, sizeof a) < 0)
            return -1;
#endif
    }
    flags = fcntl(from, F_GETFL);
    if (flags < 0 || fcntl(to, F_SETFL, flags) < 0)
        return -1;
    return 0;
}

/* dup3() where there is one: the descriptor never exists without its flag. */
static int dup_over(int from, int to, int cloexec)
{
#ifdef __linux__
    return dup3(from, to, cloexec ? O_CLOEXEC : 0);
#else
    if (dup2(from, to) < 0)
        return -1;
    return cloexec ? fcntl(to, F_SETFD, FD_CLOEXEC) : 0;
#endif
}

int pr_handoff_dup(int holder, int user, int *err)
{
    int type, fdflags;
    struct sockaddr_storage sa;
    socklen_t len = sizeof type, salen = sizeof sa;
    if (getsockopt(user, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        getsockname(user, (struct sockaddr *)&sa, &salen) < 0 ||
        (fdflags = fcntl(user, F_GETFD)) < 0 || copy_options(user, holder, sa.ss_family, type) < 0 ||
        dup_over(holder, user, fdflags & FD_CLOEXEC) < 0)
        return fail(err);
    close(holder);
    return 0;
}

int pr_handoff_reuseport(int holder, int user, int family,
                         const unsigned char *addr, unsigned int port,
                         int private_uid, int *err)
{
    int on = 1, off = 0, had = 0, chowned = 0;
    socklen_t len = sizeof had;
    struct stat st;
    if (getsockopt(user, SOL_SOCKET, SO_REUSEPORT, &had, &len) < 0 || fstat(user, &st) < 0)
        return fail(err);
    /* The kernel lets a later SO_REUSEPORT bind of the same uid onto this
     * address through its bind-bucket cache, whatever the flags say after
     * this bind.  A uid nobody runs as (fchown on a socket sets its owner;
     * needs CAP_CHOWN) leaves that door to nobody. */
    if (private_uid >= 0)
        chowned = fchown(holder, (uid_t)private_uid, (gid_t)-1) == 0 &&
                  fchown(user, (uid_t)private_uid, (gid_t)-1) == 0;
    if (setsockopt(holder, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        setsockopt(user, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        bind_port(user, family, addr, port) < 0) {
        *err = errno;
        setsockopt(holder, SOL_SOCKET, SO_REUSEPORT, &off, sizeof off);
        setsockopt(user, SOL_SOCKET, SO_REUSEPORT, &had, sizeof had);
        if (private_uid >= 0)
            fchown(user, st.st_uid, (gid_t)-1);
        return -1;
    }
    /* The holder stays bound, for the caller to close or keep.  Clearing the
     * flags makes later SO_REUSEPORT binds by others fail. */
    setsockopt(holder, SOL_SOCKET, SO_REUSEPORT, &off, sizeof off);
    if (!had)
        setsockopt(user, SOL_SOCKET, SO_REUSEPORT, &off, sizeof off);
    if (chowned)
        fchown(user, st.st_uid, (gid_t)-1);
    return 0;
}

int pr_set_local_port_range(int fd, unsigned int lo, unsigned int hi, int *err)
{
#ifdef IP_LOCAL_PORT_RANGE
    unsigned int range = (hi << 16) | lo;
    if (setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range) < 0)
        return fail(err);
    return 0;
#else
    (void)fd;
    (void)lo;
    (void)hi;
    *err = ENOPROTOOPT;
    return -1;
#endif
}

int pr_port_range(unsigned int *lo, unsigned int *hi, int *err)
{
#ifdef __linux__
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");
    int n;
    if (!f)
        return fail(err);
    n = fscanf(f, "%u %u", lo, hi);
    fclose(f);
    if (n != 2) {
        *err = EIO;
        return -1;
    }
#else
    int first, last;
    size_t len = sizeof first;
    if (sysctlbyname("net.inet.ip.portrange.first", &first, &len, NULL, 0) < 0)
        return fail(err);
    len = sizeof last;
    if (sysctlbyname("net.inet.ip.portrange.last", &last, &len, NULL, 0) < 0)
        return fail(err);
    *lo = (unsigned int)first;
    *hi = (unsigned int)last;
#endif
    return 0;
}

/* What a holder must be, restored on a socket that held its port for a
 * user: no reuse options, no device, not listening or connected, blocking, a
 * UDP one deaf again.  connect(AF_UNSPEC) is how Linux undoes listen() or
 * connect() (tcp_disconnect, udp_disconnect) and it keeps an explicitly bound
 * port bound; the reuse options are cleared first, while a listening socket
 * still shuts everybody out. */
int pr_readopt(int fd, int reset_options, int *err)
{
    int family, type, off = 0, flags, reuseport = 0, reuseaddr = 0, listening = 0;
    unsigned int drained = 0;
    struct sockaddr_storage sa;
    socklen_t len = sizeof type, salen = sizeof sa;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &salen) < 0)
        return fail(err);
    family = sa.ss_family;
    /* A TCP connection cannot be undone without a reset of the peer. */
    salen = sizeof sa;
    if (type == SOCK_STREAM && getpeername(fd, (struct sockaddr *)&sa, &salen) == 0) {
        *err = EISCONN;
        return -1;
    }
    /* Read first and cleared only where set: a holder coming back usually
     * has neither, and each call is a system call. */
    len = sizeof reuseport;
    if (getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &reuseport, &len) < 0)
        return fail(err);
    len = sizeof reuseaddr;
    if (getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuseaddr, &len) < 0 ||
        (reuseaddr && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &off, sizeof off) < 0) ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &off, sizeof off) < 0))
        return fail(err);
#ifdef __linux__
    {
        /* A holder tied to one device leaves the port to sockets on others. */
        char dev[IFNAMSIZ] = "";
        len = sizeof dev;
        if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &len) < 0)
            return fail(err);
        if (dev[0] && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, "", 0) < 0)
            return fail(err);
    }
#endif
    if (reset_options) {
        /* The user set options: a fresh holder's values, as a new one has. */
        int fresh = open_holder(family, type), rc;
        if (fresh < 0)
            return fail(err);
        rc = copy_options(fresh, fd, family, type);
        if (rc < 0)
            *err = errno;
        close(fresh);
        if (rc < 0)
            return -1;
    }
    len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
        return fail(err);
    memset(&sa, 0, sizeof sa);
    sa.ss_family = AF_UNSPEC;
    /* Elsewhere (XNU) connect(AF_UNSPEC) may be refused: harmless unless
     * the socket listens, which then cannot be undone. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && listening)
        return fail(err);
    /* Reuse options on a TCP socket let Linux's bind bucket remember binds
     * that skip the conflict check (tb->fastreuse, tb->fastreuseport with
     * a uid): the socket's own, or another process's that SO_REUSEADDR let
     * in beside it.  A listen() without the flags resets that.  It fails
     * while TIME_WAIT connections of the port bar it: best effort. */
    if (type == SOCK_STREAM && (reuseport || reuseaddr) && listen(fd, 1) == 0 &&
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return fail(err);
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || ((flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) /* set_inheritable(True) undone */
        return fail(err);
    if (type == SOCK_DGRAM) {
        char byte;
        if (drop_input(fd) < 0)
            return fail(err);
        /* What queued up before the filter; bounded by the queue. */
        while (drained++ < 65536 && (recv(fd, &byte, 1, MSG_DONTWAIT) >= 0 || errno == EINTR))
            ;
    }
    return 0;
}

/* A new holder bound to `port` beside `fd`, a socket bound there that does
 * not listen: SO_REUSEADDR on both for that one bind (cleared on the holder
 * at once; fd's own setting is put back).  The new holder goes to *out. */
int pr_hold_beside(int fd, int family, int type, unsigned int port, int *out, int *err)
{
    int on = 1, off = 0, had = 0, h;
    socklen_t len = sizeof had;
    if (getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &had, &len) < 0)
        return fail(err);
    h = open_holder(family, type);
    if (h < 0)
        return fail(err);
    if (setsockopt(h, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        bind_port(h, family, NULL, port) < 0 ||
        setsockopt(h, SOL_SOCKET, SO_REUSEADDR, &off, sizeof off) < 0) {
        *err = errno;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &had, sizeof had);
        close(h);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &had, sizeof had);
    *out = h;
    return 0;
}

/* Hold `port` again after the user's socket on it was closed, into *out.  A
 * TCP port may still have TIME_WAIT connections of that socket: then the
 * holder binds with SO_REUSEADDR (which they allow only if the user's socket
 * had it), and listens once before clearing it, so that the kernel's
 * bind-bucket cache (tb->fastreuse) never lets others' SO_REUSEADDR binds
 * skip the conflict check; connect(AF_UNSPEC) then stops it listening. */
int pr_rehold(int family, int type, unsigned int port, int *out, int *err)
{
    int on = 1, off = 0;
    struct sockaddr unspec;
    int h = open_holder(family, type);
    if (h < 0)
        return fail(err);
    if (bind_port(h, family, NULL, port) == 0) {
        *out = h;
        return 0;
    }
    *err = errno;
    if (*err != EADDRINUSE || type != SOCK_STREAM) {
        close(h);
        return -1;
    }
    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    if (setsockopt(h, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        bind_port(h, family, NULL, port) < 0 || listen(h, 1) < 0 ||
        setsockopt(h, SOL_SOCKET, SO_REUSEADDR, &off, sizeof off) < 0 ||
        connect(h, &unspec, sizeof unspec) < 0) {
        *err = errno;
        close(h);
        return -1;
    }
    *out = h;
    return 0;
}

int pr_open_input(int fd, int rcvbuf, int *err)
{
#ifdef __linux__
    int unused = 0; /* an int-sized option, as in copy_options() */
    if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused) < 0)
        return fail(err);
#else
    char byte;
    unsigned int drained = 0;
    while (drained++ < 65536 && (recv(fd, &byte, 1, MSG_DONTWAIT) >= 0 || errno == EINTR))
        ;
#endif
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0)
        return fail(err);
    return 0;
}

/* state: a flag byte, then the saved mask (sigset_t fits in 128 bytes on
 * every system we build for). */
int pr_hold_signals(unsigned char *state, int *err)
{
    sigset_t all, old;
    sigfillset(&all);
    /* sigprocmask: Linux's and macOS's act on the calling thread, and
     * pthread_sigmask would need libpthread on old C libraries. */
    if (sigprocmask(SIG_BLOCK, &all, &old) < 0)
        return fail(err);
    memcpy(state + 8, &old, sizeof old < 128 ? sizeof old : 128);
    state[0] = 1;
    return 0;
}

int pr_restore_signals(unsigned char *state, int *err)
{
    sigset_t old;
    if (!state[0])
        return 0;
    memcpy(&old, state + 8, sizeof old < 128 ? sizeof old : 128);
    if (sigprocmask(SIG_SETMASK, &old, NULL) < 0)
        return fail(err);
    state[0] = 0;
    return 0;
}
