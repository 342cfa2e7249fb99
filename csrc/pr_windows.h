/* Windows half of the portreserve shim.  This text is also the CFFI cdef, so
 * it holds only declarations cffi can parse (no #include, no macros); the C
 * that includes it must include <stdint.h> first.  SOCKET and HANDLE travel
 * as uintptr_t, reservation tokens as uint64_t.
 *
 * Every fallible call returns 0 on success or the Windows error code of the
 * failing call (WSAGetLastError() for Winsock, GetLastError() or the return
 * value for the rest), captured right after that call.  Ports are in host
 * byte order here; the shim converts where Windows wants network order.
 */

/* Control codes and the output size, filled in by the compiler from the SDK
 * headers (the other sizes are checked at compile time in pr_windows.c). */
extern const uint32_t pr_sio_acquire_port_reservation;
extern const uint32_t pr_sio_release_port_reservation;
extern const uint32_t pr_sio_associate_port_reservation;
extern const uint32_t pr_sizeof_instance;            /* INET_PORT_RESERVATION_INSTANCE */

/* INET_PORT_RESERVATION_INSTANCE, in host byte order. */
typedef struct {
    unsigned int start_port;
    unsigned int number_of_ports;
    uint64_t token;
} pr_instance;

/* The exact bytes the shim gives to / takes from WSAIoctl (tests check them). */
void pr_encode_port_range(unsigned int start_port, unsigned int number_of_ports,
                          unsigned char *out4);
void pr_encode_token(uint64_t token, unsigned char *out8);
void pr_decode_instance(const unsigned char *in16, pr_instance *out);

/* Synchronous WSAIoctl SIO_{ACQUIRE,RELEASE,ASSOCIATE}_PORT_RESERVATION.
 * pr_acquire gives ERROR_INVALID_DATA (13) when the call returns fewer bytes
 * than an INET_PORT_RESERVATION_INSTANCE. */
uint32_t pr_acquire(uintptr_t s, unsigned int start_port, unsigned int number_of_ports,
                    pr_instance *out);
uint32_t pr_release(uintptr_t s, uint64_t token);
uint32_t pr_associate(uintptr_t s, uint64_t token);

/* {Create,Delete,Lookup}Persistent{Tcp,Udp}PortReservation (udp = 0 or 1),
 * resolved at run time: a missing one gives ERROR_PROC_NOT_FOUND (127). */
uint32_t pr_persistent_create(int udp, unsigned int start_port,
                              unsigned int number_of_ports, uint64_t *token);
uint32_t pr_persistent_delete(int udp, unsigned int start_port,
                              unsigned int number_of_ports);
uint32_t pr_persistent_lookup(int udp, unsigned int start_port,
                              unsigned int number_of_ports, uint64_t *token);

/* Overlapped WSAIoctl, any control code (the tests use one that really
 * pends).  An op owns its WSAOVERLAPPED and buffers.  It is referenced by its
 * caller (until pr_op_free) and by the system while a completion may still
 * arrive; it is freed when both are done, so the system never writes to freed
 * memory.  See pr_windows.c. */
enum {
    PR_NOTIFY_EVENT = 0,    /* an event; pr_op_result / pr_op_wait see it */
    PR_NOTIFY_IOCP = 1      /* a packet on the I/O completion port the socket
                               is attached to, dequeued by pr_iocp_get */
};
typedef struct pr_op pr_op;

/* NULL with *err set when memory or the event cannot be had. */
pr_op *pr_op_new(int notify, uint32_t code, const void *in, uint32_t in_size,
                 uint32_t out_size, uint32_t *err);
/* 0: finished at once (an IOCP packet still follows);
 * 997 (WSA_IO_PENDING): under way; other: failed at once, nothing follows. */
uint32_t pr_op_start(pr_op *op, uintptr_t s);
/* 1 with the op's status and byte count when it has finished, else 0. */
int pr_op_result(pr_op *op, uint32_t *status, uint32_t *bytes);
/* Wait up to timeout_ms (0xFFFFFFFF: forever) for an event op to finish:
 * 0 finished, 258 (WAIT_TIMEOUT) not yet, or the error of the wait
 * (1, ERROR_INVALID_FUNCTION, for an IOCP op: pr_iocp_get finishes those). */
uint32_t pr_op_wait(pr_op *op, uint32_t timeout_ms);
/* CancelIoEx: 0 when asked (the op then finishes, usually with 995), 1168
 * (ERROR_NOT_FOUND) when too late: finished, or its completion is on the way. */
uint32_t pr_op_cancel(pr_op *op);
/* Copy up to size bytes of the output buffer; returns how many. */
uint32_t pr_op_out(pr_op *op, unsigned char *buf, uint32_t size);
/* Drop the caller's reference.  A pending event op is cancelled and waited
 * for (up to a second); an IOCP op is freed by its packet. */
void pr_op_free(pr_op *op);

/* I/O completion ports. */
uint32_t pr_iocp_new(uintptr_t *iocp);
uint32_t pr_iocp_attach(uintptr_t iocp, uintptr_t s);
/* Dequeue up to max_ops finished ops (GetQueuedCompletionStatusEx) into ops,
 * their count into *count; 258 (WAIT_TIMEOUT) when none came in time.
 * Their status is the Winsock code, as with an event (Wine: 10045 for an
 * unsupported ioctl, where the packet itself says Win32 50).  Only packets of
 * sockets attached by pr_iocp_attach are decoded; any other packet (posted by
 * someone else, with their OVERLAPPED or none) is skipped, never written
 * through.  Ops already freed by their caller are freed here, not returned. */
uint32_t pr_iocp_get(uintptr_t iocp, uint32_t timeout_ms, pr_op **ops,
                     uint32_t max_ops, uint32_t *count);
/* Post a packet with no op (PostQueuedCompletionStatus): it wakes a thread
 * waiting in pr_iocp_get, which skips it (that call then counts 0 ops). */
uint32_t pr_iocp_post(uintptr_t iocp);
uint32_t pr_iocp_close(uintptr_t iocp);
