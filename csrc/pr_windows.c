/* Windows system calls of portreserve; declarations and contract in pr_windows.h.
 *
 * The overlapped engine.  An op is a WSAOVERLAPPED plus the buffers of one
 * WSAIoctl.  Once the call returned WSA_IO_PENDING, or succeeded at once on a
 * socket attached to an I/O completion port (IOCP), Windows still owns the op: it
 * writes the result into the WSAOVERLAPPED and the output buffer, and then
 * signals the event, or queues a packet that points at the op to the I/O
 * completion port.  So an op carries two references, the caller's (dropped
 * by pr_op_free) and the system's (dropped when the completion has been
 * consumed: seen through the event, dequeued from the IOCP), and is freed
 * only when both are gone.
 * An op whose completion never comes is leaked, never freed under the kernel.
 *
 * Wine (8.0) never writes STATUS_PENDING into Internal and, for an ioctl it
 * does not support, returns WSA_IO_PENDING with Internal already final and
 * never signals the event: Internal is preset to STATUS_PENDING and checked
 * (HasOverlappedIoCompleted) before any wait.
 */
/* CancelIoEx, GetQueuedCompletionStatusEx and the port-reservation ioctls
 * are Windows 7 API (Vista for some); say so before any header. */
#ifndef _WIN32_WINNT
#define _WIN32_WINNT 0x0601
#endif
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mstcpip.h>
#include <windows.h>

#include "pr_windows.h"

#define PR_STATUS_PENDING 0x103 /* STATUS_PENDING; ntstatus.h clashes with winnt.h */

/* The SDK names the members of INET_PORT_RESERVATION_INSTANCE
 * (inst.Reservation.StartPort, inst.Token.Token); mingw's mstcpip.h makes
 * them anonymous in C (inst.StartPort, inst.Token).  This copy of the layout
 * lets the rest of the file work with either header. */
typedef struct {
    INET_PORT_RANGE Reservation;
    INET_PORT_RESERVATION_TOKEN Token;
} pr_wire_instance;

/* Layout checks at compile time.  Not _Static_assert: MSVC's default C mode
 * (what setuptools uses) lacks it before /std:c11.  A false condition gives
 * an array of size -1, an error in every C compiler. */
#define PR_CHECK(name, cond) typedef char pr_check_##name[(cond) ? 1 : -1]
PR_CHECK(port_range_is_4_bytes, sizeof(INET_PORT_RANGE) == 4);
PR_CHECK(token_is_8_bytes, sizeof(INET_PORT_RESERVATION_TOKEN) == 8);
PR_CHECK(instance_is_16_bytes, sizeof(INET_PORT_RESERVATION_INSTANCE) == 16);
PR_CHECK(wire_instance_mirrors_instance,
         sizeof(pr_wire_instance) == sizeof(INET_PORT_RESERVATION_INSTANCE));
PR_CHECK(token_at_offset_8, offsetof(pr_wire_instance, Token) == 8);
PR_CHECK(handles_travel_as_uintptr_t,
         sizeof(SOCKET) == sizeof(uintptr_t) && sizeof(HANDLE) == sizeof(uintptr_t));

const uint32_t pr_sio_acquire_port_reservation = SIO_ACQUIRE_PORT_RESERVATION;
const uint32_t pr_sio_release_port_reservation = SIO_RELEASE_PORT_RESERVATION;
const uint32_t pr_sio_associate_port_reservation = SIO_ASSOCIATE_PORT_RESERVATION;
const uint32_t pr_sizeof_instance = sizeof(INET_PORT_RESERVATION_INSTANCE);

/* ---- structs that reach WSAIoctl ---------------------------------------- */

void pr_encode_port_range(unsigned int start_port, unsigned int number_of_ports,
                          unsigned char *out4)
{
    INET_PORT_RANGE range;
    range.StartPort = htons((u_short)start_port); /* network order, per the docs */
    range.NumberOfPorts = (USHORT)number_of_ports;
    memcpy(out4, &range, sizeof range);
}

void pr_encode_token(uint64_t token, unsigned char *out8)
{
    INET_PORT_RESERVATION_TOKEN t;
    t.Token = token;
    memcpy(out8, &t, sizeof t);
}

void pr_decode_instance(const unsigned char *in16, pr_instance *out)
{
    pr_wire_instance inst;
    memcpy(&inst, in16, sizeof inst);
    out->start_port = ntohs(inst.Reservation.StartPort);
    out->number_of_ports = inst.Reservation.NumberOfPorts;
    out->token = inst.Token.Token;
}

/* ---- synchronous ioctls --------------------------------------------------- */

/* A call that says it succeeded but filled less of the output buffer than
 * the struct it owes us fails with ERROR_INVALID_DATA: never decode zeros. */
static uint32_t ioctl_sync(uintptr_t s, DWORD code, void *in, DWORD in_size,
                           void *out, DWORD out_size)
{
    DWORD bytes = 0;
    if (WSAIoctl((SOCKET)s, code, in, in_size, out, out_size, &bytes, NULL, NULL) != 0)
        return (uint32_t)WSAGetLastError();
    if (bytes < out_size)
        return ERROR_INVALID_DATA;
    return 0;
}

uint32_t pr_acquire(uintptr_t s, unsigned int start_port, unsigned int number_of_ports,
                    pr_instance *out)
{
    unsigned char range[sizeof(INET_PORT_RANGE)];
    unsigned char inst[sizeof(INET_PORT_RESERVATION_INSTANCE)];
    uint32_t err;
    pr_encode_port_range(start_port, number_of_ports, range);
    memset(inst, 0, sizeof inst);
    err = ioctl_sync(s, SIO_ACQUIRE_PORT_RESERVATION, range, sizeof range, inst, sizeof inst);
    if (err == 0)
        pr_decode_instance(inst, out);
    return err;
}

uint32_t pr_release(uintptr_t s, uint64_t token)
{
    unsigned char t[sizeof(INET_PORT_RESERVATION_TOKEN)];
    pr_encode_token(token, t);
    return ioctl_sync(s, SIO_RELEASE_PORT_RESERVATION, t, sizeof t, NULL, 0);
}

uint32_t pr_associate(uintptr_t s, uint64_t token)
{
    unsigned char t[sizeof(INET_PORT_RESERVATION_TOKEN)];
    pr_encode_token(token, t);
    return ioctl_sync(s, SIO_ASSOCIATE_PORT_RESERVATION, t, sizeof t, NULL, 0);
}

/* ---- persistent reservations (iphlpapi) ----------------------------------- */

/* Wine's iphlpapi does not export these; linking them directly makes the
 * process abort when one is called.  Resolve them at run time instead. */
typedef ULONG(WINAPI *pr_create_fn)(USHORT, USHORT, PULONG64);
typedef ULONG(WINAPI *pr_delete_fn)(USHORT, USHORT);

/* The module stays loaded for the life of the process (as if linked). */
static FARPROC iphlpapi_proc(const char *name)
{
    HMODULE dll = GetModuleHandleA("iphlpapi.dll");
    if (dll == NULL)
        dll = LoadLibraryExA("iphlpapi.dll", NULL, LOAD_LIBRARY_SEARCH_SYSTEM32);
    return dll ? GetProcAddress(dll, name) : NULL;
}

static uint32_t persistent_token_call(const char *name, unsigned int start_port,
                                      unsigned int number_of_ports, uint64_t *token)
{
    ULONG64 t = 0;
    ULONG rc;
    pr_create_fn fn = (pr_create_fn)(void (*)(void))iphlpapi_proc(name);
    if (fn == NULL)
        return ERROR_PROC_NOT_FOUND;
    rc = fn(htons((u_short)start_port), (USHORT)number_of_ports, &t);
    if (rc == NO_ERROR)
        *token = t;
    return rc;
}

uint32_t pr_persistent_create(int udp, unsigned int start_port,
                              unsigned int number_of_ports, uint64_t *token)
{
    return persistent_token_call(udp ? "CreatePersistentUdpPortReservation"
                                     : "CreatePersistentTcpPortReservation",
                                 start_port, number_of_ports, token);
}

uint32_t pr_persistent_lookup(int udp, unsigned int start_port,
                              unsigned int number_of_ports, uint64_t *token)
{
    return persistent_token_call(udp ? "LookupPersistentUdpPortReservation"
                                     : "LookupPersistentTcpPortReservation",
                                 start_port, number_of_ports, token);
}

uint32_t pr_persistent_delete(int udp, unsigned int start_port,
                              unsigned int number_of_ports)
{
    pr_delete_fn fn = (pr_delete_fn)(void (*)(void))iphlpapi_proc(
        udp ? "DeletePersistentUdpPortReservation" : "DeletePersistentTcpPortReservation");
    if (fn == NULL)
        return ERROR_PROC_NOT_FOUND;
    return fn(htons((u_short)start_port), (USHORT)number_of_ports);
}

/* ---- the overlapped engine ------------------------------------------------ */

struct pr_op {
    WSAOVERLAPPED ov;       /* first: the completion hands back &op->ov */
    SOCKET s;
    int notify;
    DWORD code;
    volatile LONG refs;     /* caller + system; freed at 0 */
    volatile LONG consumed; /* the system's reference has been dropped */
    volatile LONG done;     /* status and bytes are final */
    uint32_t status;
    uint32_t bytes;
    DWORD in_size, out_size;
    unsigned char *in, *out; /* point into the same allocation, after the op */
};

static WSAEVENT op_event(pr_op *op)
{
    return (WSAEVENT)((uintptr_t)op->ov.hEvent & ~(uintptr_t)1);
}

/* Drop one reference; 1 when that freed the op. */
static int op_unref(pr_op *op)
{
    if (InterlockedDecrement(&op->refs) != 0)
        return 0;
    if (op->notify == PR_NOTIFY_EVENT)
        WSACloseEvent(op_event(op));
    free(op);
    return 1;
}

static void op_finish(pr_op *op, uint32_t status, uint32_t bytes)
{
    op->status = status;
    op->bytes = bytes;
    InterlockedExchange(&op->done, 1);
}

/* Drop the system's reference once, whoever sees the completion first;
 * 1 when that freed the op (its caller had let go already). */
static int op_consume(pr_op *op)
{
    if (InterlockedExchange(&op->consumed, 1) != 0)
        return 0;
    return op_unref(op);
}

pr_op *pr_op_new(int notify, uint32_t code, const void *in, uint32_t in_size,
                 uint32_t out_size, uint32_t *err)
{
    pr_op *op = calloc(1, sizeof *op + in_size + out_size);
    if (op == NULL) {
        *err = ERROR_NOT_ENOUGH_MEMORY;
        return NULL;
    }
    op->s = INVALID_SOCKET;
    op->notify = notify;
    op->code = code;
    op->refs = 1;
    op->in_size = in_size;
    op->out_size = out_size;
    op->in = (unsigned char *)(op + 1);
    op->out = op->in + in_size;
    if (in_size)
        memcpy(op->in, in, in_size);
    if (notify == PR_NOTIFY_EVENT) {
        WSAEVENT ev = WSACreateEvent();
        if (ev == WSA_INVALID_EVENT) {
            *err = (uint32_t)WSAGetLastError();
            free(op);
            return NULL;
        }
        /* The low bit keeps the completion off any IOCP the socket is
         * attached to, so only the event tells about this op. */
        op->ov.hEvent = (WSAEVENT)((uintptr_t)ev | 1);
    }
    return op;
}

uint32_t pr_op_start(pr_op *op, uintptr_t s)
{
    DWORD bytes = 0;
    int rc;
    uint32_t err;
    if (op->s != INVALID_SOCKET)
        return WSAEINVAL; /* an op runs once */
    op->s = (SOCKET)s;
    op->ov.Internal = PR_STATUS_PENDING; /* Wine leaves it as it finds it */
    InterlockedIncrement(&op->refs);     /* the system's, until consumed */
    rc = WSAIoctl(op->s, op->code, op->in_size ? op->in : NULL, op->in_size,
                  op->out_size ? op->out : NULL, op->out_size, &bytes, &op->ov, NULL);
    err = rc == 0 ? 0 : (uint32_t)WSAGetLastError();
    if (err == WSA_IO_PENDING)
        return err;
    if (err == 0) {
        op_finish(op, 0, bytes);
        /* An IOCP packet still follows and consumes the op. */
        if (op->notify == PR_NOTIFY_EVENT)
            op_consume(op);
        return 0;
    }
    op_finish(op, err, 0); /* failed at once: no completion will follow */
    op_consume(op);
    return err;
}

/* The Win32 code of a finished op, read from Internal.  Without waiting,
 * GetOverlappedResult does not use the handle, so a closed socket is fine. */
static uint32_t internal_status(pr_op *op, DWORD *bytes)
{
    if (GetOverlappedResult((HANDLE)op->s, (LPOVERLAPPED)&op->ov, bytes, FALSE))
        return 0;
    return (uint32_t)GetLastError();
}

/* The status of a finished op as the synchronous call would report it: a
 * Winsock code (10045 where the packet's Win32 code says 50).  Once the socket
 * is closed only Internal is left, read as a Win32 code. */
static uint32_t op_status(pr_op *op, DWORD *bytes)
{
    DWORD flags = 0;
    uint32_t err = 0;
    if (!WSAGetOverlappedResult(op->s, &op->ov, bytes, FALSE, &flags))
        err = (uint32_t)WSAGetLastError();
    if (err == WSAENOTSOCK) /* the socket was closed since: Internal has it */
        err = internal_status(op, bytes);
    return err;
}

/* Event ops: read the final status once Internal says the op is over. */
static int event_poll(pr_op *op)
{
    DWORD bytes = 0;
    uint32_t err;
    if (op->done)
        return 1;
    if (!HasOverlappedIoCompleted(&op->ov))
        return 0;
    err = op_status(op, &bytes);
    op_finish(op, err, bytes);
    op_consume(op);
    return 1;
}

int pr_op_result(pr_op *op, uint32_t *status, uint32_t *bytes)
{
    if (op->notify == PR_NOTIFY_EVENT)
        event_poll(op);
    /* An IOCP op is over only when its packet was dequeued. */
    if (!op->done || (op->notify != PR_NOTIFY_EVENT && !op->consumed))
        return 0;
    *status = op->status;
    *bytes = op->bytes;
    return 1;
}

uint32_t pr_op_wait(pr_op *op, uint32_t timeout_ms)
{
    uint32_t status, bytes;
    if (pr_op_result(op, &status, &bytes))
        return 0;
    if (op->notify == PR_NOTIFY_EVENT) {
        DWORD rc = WaitForSingleObject(op_event(op), timeout_ms);
        if (rc == WAIT_FAILED)
            return (uint32_t)GetLastError();
        /* Timed out or not, Internal decides (Wine may never signal). */
        return event_poll(op) ? 0 : WAIT_TIMEOUT;
    }
    return ERROR_INVALID_FUNCTION; /* IOCP ops finish through pr_iocp_get */
}

uint32_t pr_op_cancel(pr_op *op)
{
    if (op->s == INVALID_SOCKET || op->done)
        return ERROR_NOT_FOUND;
    if (!CancelIoEx((HANDLE)op->s, &op->ov))
        return (uint32_t)GetLastError(); /* ERROR_NOT_FOUND: too late */
    return 0;
}

uint32_t pr_op_out(pr_op *op, unsigned char *buf, uint32_t size)
{
    uint32_t n = size < op->out_size ? size : op->out_size;
    memcpy(buf, op->out, n);
    return n;
}

void pr_op_free(pr_op *op)
{
    if (op == NULL)
        return;
    if (op->notify == PR_NOTIFY_EVENT && op->s != INVALID_SOCKET && !event_poll(op)) {
        /* Nobody will look at the event after this: cancel and wait here.
         * (A closed socket has cancelled the op already.) */
        CancelIoEx((HANDLE)op->s, &op->ov);
        WaitForSingleObject(op_event(op), 1000);
        event_poll(op); /* still pending after that: leaked, not freed */
    }
    op_unref(op);
}

/* ---- completion ports ----------------------------------------------------- */

uint32_t pr_iocp_new(uintptr_t *iocp)
{
    HANDLE h = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (h == NULL)
        return (uint32_t)GetLastError();
    *iocp = (uintptr_t)h;
    return 0;
}

/* The completion key of every socket we attach: a packet with another key
 * was posted by someone else, and its OVERLAPPED is not a pr_op.  The address of a variable of ours, so no other code in the process picks
 * the same value by chance. */
static const char iocp_key_owner = 0;
#define PR_IOCP_KEY ((ULONG_PTR)&iocp_key_owner)

uint32_t pr_iocp_attach(uintptr_t iocp, uintptr_t s)
{
    if (CreateIoCompletionPort((HANDLE)s, (HANDLE)iocp, PR_IOCP_KEY, 0) == NULL)
        return (uint32_t)GetLastError();
    return 0;
}

uint32_t pr_iocp_get(uintptr_t iocp, uint32_t timeout_ms, pr_op **ops,
                     uint32_t max_ops, uint32_t *count)
{
    OVERLAPPED_ENTRY entries[64];
    ULONG got = 0, i;
    uint32_t n = 0;
    if (max_ops > 64)
        max_ops = 64;
    *count = 0;
    if (!GetQueuedCompletionStatusEx((HANDLE)iocp, entries, max_ops, &got, timeout_ms, FALSE))
        return (uint32_t)GetLastError(); /* WAIT_TIMEOUT when nothing came */
    for (i = 0; i < got; i++) {
        pr_op *op = (pr_op *)entries[i].lpOverlapped;
        DWORD bytes = 0;
        uint32_t status;
        /* Posted by someone else (or by pr_iocp_post): its OVERLAPPED, if
         * any, is not ours to read or write. */
        if (op == NULL || entries[i].lpCompletionKey != PR_IOCP_KEY)
            continue;
        status = op_status(op, &bytes);
        /* Finished at once: WSAIoctl's own result stands (Wine's packet
         * then says 0 bytes, for FIONREAD at least). */
        if (!op->done)
            op_finish(op, status, bytes);
        if (!op_consume(op)) /* freed: its caller had let go already */
            ops[n++] = op;
    }
    *count = n;
    return 0;
}

uint32_t pr_iocp_post(uintptr_t iocp)
{
    if (!PostQueuedCompletionStatus((HANDLE)iocp, 0, 0, NULL))
        return (uint32_t)GetLastError();
    return 0;
}

uint32_t pr_iocp_close(uintptr_t iocp)
{
    if (!CloseHandle((HANDLE)iocp))
        return (uint32_t)GetLastError();
    return 0;
}
