// Linux socket-layer pieces that Swift cannot import directly: packed structs
// (epoll_event on x86_64), control-message macros (CMSG_*), and a few constants.
#ifndef SLUICE_SHIMS_H
#define SLUICE_SHIMS_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IP_RECVORIGDSTADDR
#define IP_RECVORIGDSTADDR 20
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif
#ifndef IPV6_RECVORIGDSTADDR
#define IPV6_RECVORIGDSTADDR 74
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static const int sluice_ip_transparent = IP_TRANSPARENT;
static const int sluice_ip_recvorigdstaddr = IP_RECVORIGDSTADDR;
static const int sluice_ipv6_transparent = IPV6_TRANSPARENT;
static const int sluice_ipv6_recvorigdstaddr = IPV6_RECVORIGDSTADDR;
static const int sluice_ip_bind_address_no_port = IP_BIND_ADDRESS_NO_PORT;

/// epoll_ctl with the event spelled out, so Swift never builds a packed epoll_event.
int sluice_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);

/// epoll_wait that unpacks the events into two parallel arrays.
int sluice_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max_events, int timeout_ms);

/// recvmsg for one datagram, returning the original destination carried by the
/// IP_ORIGDSTADDR / IPV6_ORIGDSTADDR control message (or family 0 when absent).
/// Returns the byte count, or -1 with errno set.
ssize_t sluice_recv_with_original_destination(int fd, void *buffer, size_t length,
                                              struct sockaddr_storage *source,
                                              struct sockaddr_storage *original_destination,
                                              int *truncated);

/// The most datagrams one batch call moves (`sluice_recv_batch*`, `sluice_send_batch`).
#define SLUICE_DATAGRAM_BATCH 64

/// recvmmsg of up to `count` (at most SLUICE_DATAGRAM_BATCH) datagrams without waiting,
/// datagram i into `buffers + i * slot_length` (at most `slot_length` bytes). For each:
/// `lengths[i]`, `truncated[i]` (cut to fit), and when `sources` is not NULL the sender
/// into `sources[i]` and the original destination (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR, or
/// family 0 when absent) into `original_destinations[i]`. Returns how many datagrams were
/// received (at least 1), or -1 with errno set (EAGAIN: none pending). Retries EINTR.
int sluice_recv_batch(int fd, void *buffers, size_t slot_length, int count, size_t *lengths, int *truncated,
                      struct sockaddr_storage *sources, struct sockaddr_storage *original_destinations);

/// sendmmsg of `count` (at most SLUICE_DATAGRAM_BATCH) datagrams, `datagrams[i]` each, to
/// `address` (NULL on a connected socket), MSG_NOSIGNAL, retrying EINTR. Returns how many
/// the kernel took from the start of the list (a datagram it refused stops the call), or -1
/// with errno set when it took none.
int sluice_send_batch(int fd, const struct iovec *datagrams, int count, const struct sockaddr *address,
                      socklen_t address_length);

/// sendmsg of `length` bytes with one descriptor attached (SCM_RIGHTS), or none when
/// `descriptor` < 0. MSG_NOSIGNAL. Returns the byte count, or -1 with errno set.
ssize_t sluice_send_with_descriptor(int fd, const void *buffer, size_t length, int descriptor);

/// recvmsg of up to `length` bytes and of the descriptors attached (SCM_RIGHTS, received
/// close-on-exec), at most `maximum` of them into `descriptors` (any more are closed);
/// `*count` says how many. `*truncated` is set when control data was cut (MSG_CTRUNC).
/// Returns the byte count (0: end of stream), or -1 with errno set.
ssize_t sluice_receive_with_descriptors(int fd, void *buffer, size_t length, int *descriptors, int maximum,
                                        int *count, int *truncated);

/// The inode of the network namespace socket `fd` belongs to (SIOCGSKNS), or 0.
unsigned long sluice_socket_namespace_inode(int fd);
/// The inode of the calling thread's network namespace, or 0.
unsigned long sluice_own_namespace_inode(void);

/// accept4 with SOCK_NONBLOCK and SOCK_CLOEXEC (accept4 is a GNU extension Swift does not see).
int sluice_accept_nonblocking(int fd, struct sockaddr *address, socklen_t *length);
/// The user ID of the process at the other end of the Unix socket `fd` (SO_PEERCRED); -1 when
/// it cannot be read.
long sluice_peer_uid(int fd);

/// setns(fd, CLONE_NEWNET) for the calling thread (setns is a GNU extension Swift does not see).
int sluice_enter_network_namespace(int fd);

/// statfs(path).f_type, or -1.
long sluice_filesystem_type(const char *path);
/// mount -t bpf bpf TARGET.
int sluice_mount_bpffs(const char *target);

/// Routes libbpf's messages to stderr without debug output and without the kernel's
/// complaints about conditions Sluice handles (clsact missing or already there).
void sluice_libbpf_quiet_expected_errors(void);

#endif
