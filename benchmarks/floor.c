/* The physical floor: the system calls of each benchmarked operation in a
 * tight C loop, with no Python in between.  The runner compiles this file
 * together with csrc/pr_posix.c, so its cases make exactly the calls the
 * cffi backend makes.
 *
 * Usage: floor ROUNDS ITERS idle|busy
 * Prints one JSON object: case name -> list of per-operation times in
 * microseconds, one per round.  The runner takes the medians.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pr_posix.h"

static int rounds, iters;
static int fds[10000];
static unsigned char map[65536];
static int first_case = 1;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

/* Run op() `n` times per round; print the per-op times of every round. */
static void measure(const char *name, void (*op)(void), int n)
{
    int r, i;
    op(); /* warm up */
    printf("%s\"%s\": [", first_case ? "" : ",\n", name);
    first_case = 0;
    for (r = 0; r < rounds; r++) {
        double t0 = now_us();
        for (i = 0; i < n; i++)
            op();
        printf("%s%.3f", r ? ", " : "", (now_us() - t0) / n);
    }
    printf("]");
}

/* reserve(1) as the engine makes it: a holder on a random port of the
 * ephemeral range outside ip_local_reserved_ports (read from that sysctl,
 * kept open). */
static unsigned int eph_lo, eph_hi;
static int reserved_fd = -1;

static int hold_one(int *h)
{
    int err, port = pr_hold_one(AF_INET6, SOCK_STREAM, eph_lo, eph_hi, reserved_fd,
                                (unsigned int)rand(), h, &err);
    if (port <= 0)
        die("pr_hold_one");
    return port;
}

/* reserve(1) + bind + close + release, as the engine does it for an
 * AF_INET6 user socket on the wildcard address (descriptor swap). */
static void cycle6_shim(void)
{
    int err, h, user;
    hold_one(&h);
    user = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (user < 0 || pr_handoff_dup(h, user, &err) < 0)
        die("pr_handoff_dup");
    close(user);
}

/* The same with an AF_INET user socket (SO_REUSEPORT hand-off). */
static void cycle4_shim(void)
{
    static const unsigned char any[4];
    int err, h, user, port = hold_one(&h);
    user = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* As the engine: a private uid when root, and the TCP holder closed. */
    if (user < 0 || pr_handoff_reuseport(h, user, AF_INET, any, port,
                                         geteuid() == 0 ? 0x7ffffffe : -1, &err) < 0)
        die("pr_handoff_reuseport");
    close(h);
    close(user);
}

/* The default cycle's system calls: the holder itself is handed out (Python
 * reads its address as it wraps the descriptor) and comes back untouched. */
static void cycle_shim(void)
{
    struct sockaddr_in6 sa;
    socklen_t len = sizeof sa;
    int h;
    hold_one(&h);
    if (getsockname(h, (struct sockaddr *)&sa, &len) < 0)
        die("getsockname");
    close(h);
}

/* reserve(1).release(). */
static void hold_one_1(void)
{
    int h;
    hold_one(&h);
    close(h);
}

static unsigned int hold_count, hold_start;

/* A start where `count` ports are free now (idle host: a few tries). */
static unsigned int free_start(unsigned int count)
{
    int err, tries;
    for (tries = 0; tries < 1000; tries++) {
        unsigned int start = 10000 + (unsigned int)rand() % (60000 - count - 10000);
        int n = pr_hold(AF_INET6, SOCK_STREAM, start, count, fds, &err);
        if (n == (int)count) {
            pr_close_all(fds, count);
            return start;
        }
    }
    die("free_start");
    return 0;
}

/* `count` holder binds at a known free start, then closing them. */
static void hold_binds(void)
{
    int err;
    if (pr_hold(AF_INET6, SOCK_STREAM, hold_start, hold_count, fds, &err) != (int)hold_count)
        die("pr_hold");
    pr_close_all(fds, hold_count);
}

/* What a wildcard reserve(count) does when its random first try collides,
 * as the engine: dump the ports bound in every state but bound-only, find
 * a free run, hold it (marking a port and going on when a bind fails), and
 * after 128 failed binds add the bound-only sockets to the map. */
static void wildcard(void)
{
    int err, n, wasted = 0;
    unsigned int p, run = 0;
    memset(map, 0, sizeof map);
    if (pr_bound_ports(IPPROTO_TCP, 1, map, &err) < 0)
        die("pr_bound_ports");
    for (p = 32768; p < 65536; p++) {
        run = map[p] ? 0 : run + 1;
        if (run < hold_count)
            continue;
        n = pr_hold(AF_INET6, SOCK_STREAM, p + 1 - hold_count, hold_count, fds, &err);
        if (n == (int)hold_count) {
            pr_close_all(fds, hold_count);
            return;
        }
        map[p + 1 - hold_count + n] = 1;
        if (wasted < 128 && (wasted += n + 1) >= 128 &&
            pr_bound_ports(IPPROTO_TCP, 2, map, &err) < 0)
            die("pr_bound_ports");
        p = p + 1 - hold_count + n;
        run = 0;
    }
    die("wildcard: no free run");
}

static void dump(void)
{
    int err;
    if (pr_bound_ports(IPPROTO_TCP, 1, map, &err) < 0)
        die("pr_bound_ports");
}

/* The dump of bound-only TCP sockets alone. */
static void dump_bound_only(void)
{
    int err;
    if (pr_bound_ports(IPPROTO_TCP, 2, map, &err) < 0)
        die("pr_bound_ports");
}

int main(int argc, char **argv)
{
    static const unsigned int counts[] = {1, 16, 256, 1024, 10000};
    struct rlimit rl;
    char name[64];
    unsigned int i;
    int busy, i_err;

    if (argc != 4)
        return 2;
    rounds = atoi(argv[1]);
    iters = atoi(argv[2]);
    busy = strcmp(argv[3], "busy") == 0;
    srand((unsigned int)getpid());
    /* 10,000 holders need more descriptors than the usual soft limit. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    reserved_fd = open("/proc/sys/net/ipv4/ip_local_reserved_ports", O_RDONLY | O_CLOEXEC);
    if (pr_port_range(&eph_lo, &eph_hi, &i_err) < 0)
        die("pr_port_range");
    printf("{");
    if (!busy) {
        measure("cycle6_shim", cycle6_shim, iters);
        measure("cycle4_shim", cycle4_shim, iters);
        measure("cycle_shim", cycle_shim, iters);
        measure("hold_one_1", hold_one_1, iters);
        for (i = 0; i < sizeof counts / sizeof counts[0]; i++) {
            hold_count = counts[i];
            if (hold_count > rl.rlim_cur - 16)
                continue;
            hold_start = free_start(hold_count);
            snprintf(name, sizeof name, "hold_%u", hold_count);
            measure(name, hold_binds, hold_count >= 1024 ? 1 : iters / (int)hold_count + 1);
        }
    }
    for (i = 1; i < 3; i++) { /* 16 and 256: the wildcard searches */
        hold_count = counts[i];
        snprintf(name, sizeof name, "wildcard_%u", hold_count);
        measure(name, wildcard, busy ? 3 : 10);
    }
    measure("dump", dump, busy ? 3 : 10);
    measure("dump_bound_only", dump_bound_only, busy ? 3 : 10);
    printf("}\n");
    return 0;
}
