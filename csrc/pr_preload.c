/* portreserve's LD_PRELOAD library: hands reserved ports to a child process
 * that binds them by number (Reservation.popen, `portreserve run`).
 *
 * The parent lends the child its holder sockets (README.md, "Giving the port
 * to the code that needs it") and names them in PORTRESERVE_PRELOAD as
 * "PPID TYPE PORT:FD PORT:FD ...".  This library interposes bind(): a bind of
 * a lent port is served from the holder, every other bind is left alone.
 *
 * - The holder's own family on the wildcard address (dual-stack [::] where
 *   the host has IPv6): the holder takes over the child's socket options and
 *   replaces its descriptor (dup3), as Reservation.bind does in-process.
 * - Any other address or family: both sockets set SO_REUSEPORT for the bind
 *   and keep it, because the parent's copy of the holder stays bound until
 *   the child exits; as root both are first given a uid nobody runs as, so
 *   no other process can join that port.
 *
 * Only the process the parent started (and what it execs in its place: its
 * parent pid is PPID) adopts holders.  A process with another parent closes
 * any it inherited and drops the variables, and so does every child forked
 * here (pthread_atfork), so grandchildren hold none of the ports.
 *
 * Linked against libc alone; everything but bind() and listen() is hidden. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define VISIBLE __attribute__((visibility("default")))
#define MAX_HELD 1024
#define SPEC "PORTRESERVE_PRELOAD"
/* The owner of a lent port's sockets as root: see pr_handoff_reuseport. */
#define PRIVATE_UID 2147483646u

static struct {
    int port, fd;
} held[MAX_HELD], reuse_on_listen[MAX_HELD];
static int nheld, held_type, nreuse;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*listen_fn)(int, int);

static bind_fn real_bind(void)
{
    static bind_fn fn;
    if (!fn)
        fn = (bind_fn)dlsym(RTLD_NEXT, "bind");
    return fn;
}

static int sock_port(int fd)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return -1;
    if (sa.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&sa)->sin_port);
    if (sa.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    return -1;
}

/* Remove this library from LD_PRELOAD and our variable from the environment,
 * so that nothing started from here loads it or sees the holders. */
static void scrub_environment(void)
{
    const char *pre = getenv("LD_PRELOAD");
    unsetenv(SPEC);
    if (pre) {
        char *copy = strdup(pre), *out = copy ? calloc(1, strlen(pre) + 1) : NULL;
        char *save = NULL, *tok;
        if (!out) {
            free(copy);
            return;
        }
        for (tok = strtok_r(copy, " :", &save); tok; tok = strtok_r(NULL, " :", &save)) {
            if (strstr(tok, "portreserve") && strstr(tok, "_preload"))
                continue;
            if (*out)
                strcat(out, ":");
            strcat(out, tok);
        }
        if (*out)
            setenv("LD_PRELOAD", out, 1);
        else
            unsetenv("LD_PRELOAD");
        free(copy);
        free(out);
    }
}

/* Close the holders not adopted; only descriptors that still are a socket on
 * their port (a number may have been reused since). */
static void drop_holders(void)
{
    int i;
    for (i = 0; i < nheld; i++)
        if (held[i].fd >= 0 && sock_port(held[i].fd) == held[i].port)
            close(held[i].fd);
    nheld = 0;
}

static void in_forked_child(void)
{
    drop_holders();
    scrub_environment();
    pthread_mutex_init(&lock, NULL);
}

__attribute__((constructor)) static void pr_preload_init(void)
{
    const char *spec = getenv(SPEC);
    char *end;
    long ppid, type;
    if (!spec)
        return;
    ppid = strtol(spec, &end, 10);
    type = strtol(end, &end, 10);
    while (*end == ' ' && nheld < MAX_HELD) {
        long port, fd;
        port = strtol(end + 1, &end, 10);
        if (*end != ':')
            break;
        fd = strtol(end + 1, &end, 10);
        held[nheld].port = (int)port;
        held[nheld].fd = (int)fd;
        nheld++;
    }
    held_type = (int)type;
    if (ppid != (long)getppid()) {
        /* Not the process the parent started: a grandchild. */
        drop_holders();
        scrub_environment();
        return;
    }
    pthread_atfork(NULL, NULL, in_forked_child);
}

/* Options a program may have set before bind() that matter for a listening
 * or datagram socket; the holder takes them over.  Not SO_REUSEADDR: on a
 * bound socket that does not listen yet it would let anyone who sets it too
 * bind the port; a TCP holder gets it once it listens (listen() below), so
 * that the connections it accepts leave TIME_WAIT a restart can bind over. */
static const struct {
    int level, name;
} copied[] = {
    {SOL_SOCKET, SO_REUSEPORT}, {SOL_SOCKET, SO_KEEPALIVE},
    {SOL_SOCKET, SO_BROADCAST}, {SOL_SOCKET, SO_OOBINLINE}, {SOL_SOCKET, SO_SNDBUF},
    {SOL_SOCKET, SO_RCVLOWAT},  {SOL_SOCKET, SO_PRIORITY},  {SOL_SOCKET, SO_MARK},
    {IPPROTO_TCP, TCP_NODELAY}, {IPPROTO_TCP, TCP_KEEPIDLE}, {IPPROTO_TCP, TCP_KEEPINTVL},
    {IPPROTO_TCP, TCP_KEEPCNT}, {IPPROTO_TCP, TCP_USER_TIMEOUT},
};

static void copy_options(int from, int to, int type)
{
    unsigned int i;
    int a, b, unused = 0;
    socklen_t len;
    for (i = 0; i < sizeof copied / sizeof copied[0]; i++) {
        if (copied[i].level == IPPROTO_TCP && type != SOCK_STREAM)
            continue;
        len = sizeof a;
        if (getsockopt(from, copied[i].level, copied[i].name, &a, &len) < 0)
            continue;
        len = sizeof b;
        if (getsockopt(to, copied[i].level, copied[i].name, &b, &len) == 0 && a != b) {
            if (copied[i].name == SO_SNDBUF)
                a /= 2; /* reported doubled */
            setsockopt(to, copied[i].level, copied[i].name, &a, sizeof a);
        }
    }
    len = sizeof a;
    if (getsockopt(from, SOL_SOCKET, SO_RCVBUF, &a, &len) == 0) {
        len = sizeof b;
        /* TCP: only a changed size, so receive autotuning stays on.  A UDP
         * holder drops everything (filter, tiny buffer): undo both. */
        if (type != SOCK_STREAM ||
            (getsockopt(to, SOL_SOCKET, SO_RCVBUF, &b, &len) == 0 && a != b)) {
            a /= 2;
            if (setsockopt(to, SOL_SOCKET, SO_RCVBUFFORCE, &a, sizeof a) < 0)
                setsockopt(to, SOL_SOCKET, SO_RCVBUF, &a, sizeof a);
        }
    }
    if (type == SOCK_DGRAM)
        setsockopt(to, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused);
    a = fcntl(from, F_GETFL);
    if (a >= 0)
        fcntl(to, F_SETFL, a);
}

static int is_wildcard(const struct sockaddr *sa)
{
    static const struct in6_addr any6 = IN6ADDR_ANY_INIT;
    if (sa->sa_family == AF_INET)
        return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
    return memcmp(&((const struct sockaddr_in6 *)sa)->sin6_addr, &any6, sizeof any6) == 0;
}

/* Serve the bind of `fd` from holder `h`; 0, or -1 with errno. */
static int adopt(int h, int fd, const struct sockaddr *sa, socklen_t len, int type)
{
    struct sockaddr_storage hs;
    socklen_t hlen = sizeof hs;
    int v6only = 0, flags, on = 1;
    socklen_t olen = sizeof v6only;
    if (getsockname(h, (struct sockaddr *)&hs, &hlen) < 0)
        return -1;
    if (sa->sa_family == AF_INET6)
        getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &olen);
    if (sa->sa_family == hs.ss_family && is_wildcard(sa) && !v6only) {
        /* The holder's exact socket: swap it in, no window at all. */
        flags = fcntl(fd, F_GETFD);
        if (flags < 0)
            return -1;
        copy_options(fd, h, type);
        olen = sizeof on;
        if (type == SOCK_STREAM && nreuse < MAX_HELD &&
            getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, &olen) == 0 && on) {
            reuse_on_listen[nreuse].fd = fd;
            reuse_on_listen[nreuse].port = sock_port(h);
            nreuse++;
        }
        if (dup3(h, fd, (flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0)
            return -1;
        close(h);
        return 0;
    }
    /* Another address or family: share the port with the parent's holder. */
    on = 1;
    if (geteuid() == 0) {
        fchown(h, PRIVATE_UID, (gid_t)-1);
        fchown(fd, PRIVATE_UID, (gid_t)-1);
    }
    if (setsockopt(h, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        real_bind()(fd, sa, len) < 0)
        return -1;
    close(h);
    return 0;
}

VISIBLE int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
    int i, port, type, rc, saved;
    socklen_t tlen = sizeof type;
    if (!nheld || !sa || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
        len < (sa->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                        : sizeof(struct sockaddr_in6)))
        return real_bind()(fd, sa, len);
    port = ntohs(((const struct sockaddr_in *)sa)->sin_port); /* same offset in both */
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != held_type)
        return real_bind()(fd, sa, len);
    pthread_mutex_lock(&lock);
    for (i = 0; i < nheld; i++)
        if (held[i].port == port && held[i].fd >= 0)
            break;
    if (i == nheld) {
        pthread_mutex_unlock(&lock);
        return real_bind()(fd, sa, len);
    }
    rc = adopt(held[i].fd, fd, sa, len, type);
    saved = errno;
    if (rc == 0)
        held[i].fd = -1;
    pthread_mutex_unlock(&lock);
    errno = saved;
    return rc;
}

VISIBLE int listen(int fd, int backlog)
{
    static listen_fn real_listen;
    int i, on = 1, rc;
    if (!real_listen)
        real_listen = (listen_fn)dlsym(RTLD_NEXT, "listen");
    rc = real_listen(fd, backlog);
    if (rc == 0 && nreuse) {
        pthread_mutex_lock(&lock);
        for (i = 0; i < nreuse; i++) {
            if (reuse_on_listen[i].fd != fd)
                continue;
            if (sock_port(fd) == reuse_on_listen[i].port)
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
            reuse_on_listen[i] = reuse_on_listen[--nreuse];
            break;
        }
        pthread_mutex_unlock(&lock);
    }
    return rc;
}
