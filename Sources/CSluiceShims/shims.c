#define _GNU_SOURCE
#include "CSluiceShims.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <sys/socket.h>

int sluice_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = events;
    event.data.u64 = token;
    return epoll_ctl(epfd, op, fd, &event);
}

int sluice_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int max_events, int timeout_ms) {
    struct epoll_event ready[256];
    if (max_events > 256) max_events = 256;
    int count = epoll_wait(epfd, ready, max_events, timeout_ms);
    for (int i = 0; i < count; i++) {
        tokens[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}

ssize_t sluice_recv_with_original_destination(int fd, void *buffer, size_t length,
                                              struct sockaddr_storage *source,
                                              struct sockaddr_storage *original_destination,
                                              int *truncated) {
    char control[256];
    struct iovec vector = { .iov_base = buffer, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_name = source;
    message.msg_namelen = sizeof *source;
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;
    memset(original_destination, 0, sizeof *original_destination);
    ssize_t received = recvmsg(fd, &message, 0);
    if (received < 0) return received;
    *truncated = (message.msg_flags & MSG_TRUNC) != 0;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level == SOL_IP && header->cmsg_type == IP_ORIGDSTADDR) {
            memcpy(original_destination, CMSG_DATA(header), sizeof(struct sockaddr_in));
        } else if (header->cmsg_level == SOL_IPV6 && header->cmsg_type == IPV6_ORIGDSTADDR) {
            memcpy(original_destination, CMSG_DATA(header), sizeof(struct sockaddr_in6));
        }
    }
    return received;
}

int sluice_recv_batch(int fd, void *buffers, size_t slot_length, int count, size_t *lengths, int *truncated,
                      struct sockaddr_storage *sources, struct sockaddr_storage *original_destinations) {
    struct mmsghdr messages[SLUICE_DATAGRAM_BATCH];
    struct iovec vectors[SLUICE_DATAGRAM_BATCH];
    union { char bytes[CMSG_SPACE(sizeof(struct sockaddr_in6))]; struct cmsghdr align; } control[SLUICE_DATAGRAM_BATCH];
    if (count > SLUICE_DATAGRAM_BATCH) count = SLUICE_DATAGRAM_BATCH;
    memset(messages, 0, sizeof(messages[0]) * (size_t)count);
    for (int i = 0; i < count; i++) {
        vectors[i].iov_base = (char *)buffers + (size_t)i * slot_length;
        vectors[i].iov_len = slot_length;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        if (sources) {
            messages[i].msg_hdr.msg_name = &sources[i];
            messages[i].msg_hdr.msg_namelen = sizeof sources[i];
            messages[i].msg_hdr.msg_control = control[i].bytes;
            messages[i].msg_hdr.msg_controllen = sizeof control[i].bytes;
        }
    }
    int received;
    do { received = recvmmsg(fd, messages, (unsigned)count, MSG_DONTWAIT, NULL); } while (received < 0 && errno == EINTR);
    for (int i = 0; i < received; i++) {
        lengths[i] = messages[i].msg_len;
        truncated[i] = (messages[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        if (!sources) continue;
        memset(&original_destinations[i], 0, sizeof original_destinations[i]);
        for (struct cmsghdr *header = CMSG_FIRSTHDR(&messages[i].msg_hdr); header;
             header = CMSG_NXTHDR(&messages[i].msg_hdr, header)) {
            if (header->cmsg_level == SOL_IP && header->cmsg_type == IP_ORIGDSTADDR) {
                memcpy(&original_destinations[i], CMSG_DATA(header), sizeof(struct sockaddr_in));
            } else if (header->cmsg_level == SOL_IPV6 && header->cmsg_type == IPV6_ORIGDSTADDR) {
                memcpy(&original_destinations[i], CMSG_DATA(header), sizeof(struct sockaddr_in6));
            }
        }
    }
    return received;
}

int sluice_send_batch(int fd, const struct iovec *datagrams, int count, const struct sockaddr *address,
                      socklen_t address_length) {
    struct mmsghdr messages[SLUICE_DATAGRAM_BATCH];
    if (count > SLUICE_DATAGRAM_BATCH) count = SLUICE_DATAGRAM_BATCH;
    memset(messages, 0, sizeof(messages[0]) * (size_t)count);
    for (int i = 0; i < count; i++) {
        messages[i].msg_hdr.msg_iov = (struct iovec *)&datagrams[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_name = (void *)address;
        messages[i].msg_hdr.msg_namelen = address ? address_length : 0;
    }
    int sent;
    do { sent = sendmmsg(fd, messages, (unsigned)count, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t sluice_send_with_descriptor(int fd, const void *buffer, size_t length, int descriptor) {
    union { char bytes[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct iovec vector = { .iov_base = (void *)buffer, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof message);
    memset(&control, 0, sizeof control);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    if (descriptor >= 0) {
        message.msg_control = control.bytes;
        message.msg_controllen = sizeof control.bytes;
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(header), &descriptor, sizeof(int));
    }
    ssize_t sent;
    do { sent = sendmsg(fd, &message, MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent;
}

ssize_t sluice_receive_with_descriptors(int fd, void *buffer, size_t length, int *descriptors, int maximum,
                                        int *count, int *truncated) {
    union { char bytes[CMSG_SPACE(sizeof(int) * 16)]; struct cmsghdr align; } control;
    struct iovec vector = { .iov_base = buffer, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control.bytes;
    message.msg_controllen = sizeof control.bytes;
    *count = 0;
    *truncated = 0;
    ssize_t received;
    do { received = recvmsg(fd, &message, MSG_CMSG_CLOEXEC); } while (received < 0 && errno == EINTR);
    if (received < 0) return received;
    *truncated = (message.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t carried = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < carried; i++) {
            int descriptor;
            memcpy(&descriptor, CMSG_DATA(header) + i * sizeof(int), sizeof(int));
            if (*count < maximum) descriptors[(*count)++] = descriptor;
            else close(descriptor);
        }
    }
    return received;
}

#include <sys/ioctl.h>
#include <sys/stat.h>
#include <fcntl.h>
#ifndef SIOCGSKNS
#define SIOCGSKNS 0x894C
#endif
unsigned long sluice_socket_namespace_inode(int fd) {
    int namespace = ioctl(fd, SIOCGSKNS);
    if (namespace < 0) return 0;
    struct stat status;
    unsigned long inode = fstat(namespace, &status) == 0 ? (unsigned long)status.st_ino : 0;
    close(namespace);
    return inode;
}

unsigned long sluice_own_namespace_inode(void) {
    struct stat status;
    return stat("/proc/thread-self/ns/net", &status) == 0 ? (unsigned long)status.st_ino : 0;
}

int sluice_accept_nonblocking(int fd, struct sockaddr *address, socklen_t *length) {
    return accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

#include <sched.h>
int sluice_enter_network_namespace(int fd) {
    return setns(fd, CLONE_NEWNET);
}

#include <sys/vfs.h>
#include <sys/mount.h>
long sluice_filesystem_type(const char *path) {
    struct statfs info;
    if (statfs(path, &info) != 0) return -1;
    return (long)info.f_type;
}

int sluice_mount_bpffs(const char *target) {
    return mount("bpf", target, "bpf", 0, NULL);
}

#include <stdarg.h>
#include <stdio.h>
#include <bpf/libbpf.h>
/* libbpf's messages, minus the kernel's netlink chatter for conditions Sluice handles
 * itself (attaching before the clsact qdisc exists, creating one that exists). */
static int sluice_libbpf_print(enum libbpf_print_level level, const char *format, va_list arguments) {
    if (level == LIBBPF_DEBUG) return 0;
    char line[1024];
    vsnprintf(line, sizeof line, format, arguments);
    if (strstr(line, "Kernel error message: Parent Qdisc") || strstr(line, "Kernel error message: Exclusivity flag"))
        return 0;
    return fputs(line, stderr);
}

void sluice_libbpf_quiet_expected_errors(void) {
    libbpf_set_print(sluice_libbpf_print);
}

long sluice_peer_uid(int fd) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    return (long)credentials.uid;
}
