/* bench/lib/kafkaload.c: the kafka area's throughput load, in C so that the load generator is
 * not what limits the rate (the Python loop in kafkaload.py managed about 4,000 requests/s,
 * which left sluice one event-loop wake-up per request).
 *
 *   kafkaload PORT FRAME_FILE SECONDS WINDOW
 *
 * Sends the ProduceRequest in FRAME_FILE (a whole frame, size prefix included, made by
 * kafkaload.produce_frame) over one TCP connection to 127.0.0.1:PORT, changing only its
 * correlation ID (bytes 8..11), with WINDOW requests in flight, for SECONDS; then waits for
 * the responses still owed. Kafka answers a connection's requests in order, so responses
 * are counted by their size prefix. Prints "REQUESTS ELAPSED_SECONDS".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec time;
    clock_gettime(CLOCK_MONOTONIC, &time);
    return time.tv_sec + time.tv_nsec / 1e9;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: kafkaload PORT FRAME_FILE SECONDS WINDOW\n");
        return 2;
    }
    int port = atoi(argv[1]), window = atoi(argv[4]);
    double seconds = atof(argv[3]);
    FILE *file = fopen(argv[2], "rb");
    if (!file) fail("frame file");
    static unsigned char frame[1 << 20];
    size_t frame_size = fread(frame, 1, sizeof frame, file);
    fclose(file);
    if (frame_size < 12 || window < 1 || window > 4096) {
        fprintf(stderr, "kafkaload: a frame of at least 12 bytes and a window of 1 to 4096 are needed\n");
        return 2;
    }

    int connection = socket(AF_INET, SOCK_STREAM, 0);
    if (connection < 0) fail("socket");
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(connection, (struct sockaddr *)&address, sizeof address) < 0) fail("connect");
    int one = 1;
    setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    /* WINDOW frames back to back, each with its own correlation ID, written at once. */
    size_t batch_size = frame_size * window;
    unsigned char *batch = malloc(batch_size);
    if (!batch) fail("malloc");
    uint32_t correlation = 0;
    unsigned char buffer[1 << 16];
    size_t buffered = 0;
    long sent = 0, received = 0;
    double started = now(), deadline = started + seconds;

    for (;;) {
        /* Top the window up: one write for every request owed. */
        int owed = (int)(window - (sent - received));
        if (owed > 0 && now() < deadline) {
            size_t length = 0;
            for (int index = 0; index < owed; index++) {
                memcpy(batch + length, frame, frame_size);
                uint32_t id = htonl(++correlation);
                memcpy(batch + length + 8, &id, 4);
                length += frame_size;
            }
            for (size_t written = 0; written < length;) {
                ssize_t count = write(connection, batch + written, length - written);
                if (count <= 0) fail("write");
                written += count;
            }
            sent += owed;
        }
        if (received == sent) break;
        ssize_t count = read(connection, buffer + buffered, sizeof buffer - buffered);
        if (count <= 0) fail("read");
        buffered += count;
        size_t offset = 0;
        for (;;) {
            if (buffered - offset < 4) break;
            uint32_t size;
            memcpy(&size, buffer + offset, 4);
            size = ntohl(size);
            if (size > sizeof buffer - 4) {
                fprintf(stderr, "kafkaload: a response of %u bytes is more than expected\n", size);
                return 1;
            }
            if (buffered - offset < 4 + size) break;
            offset += 4 + size;
            received++;
        }
        memmove(buffer, buffer + offset, buffered - offset);
        buffered -= offset;
    }
    printf("%ld %.6f\n", received, now() - started);
    close(connection);
    return 0;
}
