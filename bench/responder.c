/* responder: the minimal pod server of the data-path benchmark.
 *
 *   responder TCP_PORT UDP_PORT
 *
 * One process, one poll() loop over a TCP listener and a UDP socket on 0.0.0.0,
 * and another pair on [::] (IPv6 only) where the namespace has IPv6. TCP: accept, read the HTTP request head, write a tiny fixed
 * "HTTP/1.1 200 OK" response with Content-Length and "Connection: close", close.
 * UDP: echo every datagram to its sender. SIGTERM/SIGINT end it. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char RESPONSE[] =
	"HTTP/1.1 200 OK\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Length: 3\r\n"
	"Connection: close\r\n"
	"\r\n"
	"ok\n";

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static int parse_port(const char *s)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < 1 || v > 65535) {
		fprintf(stderr, "responder: bad port %s\n", s);
		exit(2);
	}
	return (int)v;
}

/* A listener (TCP) or socket (UDP) on the family's any-address. IPv6 is optional:
 * -1 when the kernel or the namespace has none. */
static int make_socket(int family, int type, int port)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *addr = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *addr6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;
	int one = 1;
	int fd = socket(family, type | SOCK_CLOEXEC, 0);

	if (fd < 0 && family == AF_INET6)
		return -1;
	if (fd < 0) {
		perror("responder: socket");
		exit(1);
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET6) {
		/* IPv4 stays on its own socket: no IPv4-mapped peers on this one. */
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		addr6->sin6_family = AF_INET6;
		addr6->sin6_port = htons((unsigned short)port);
		addr6->sin6_addr = in6addr_any;
		len = sizeof(*addr6);
	} else {
		addr->sin_family = AF_INET;
		addr->sin_port = htons((unsigned short)port);
		addr->sin_addr.s_addr = htonl(INADDR_ANY);
		len = sizeof(*addr);
	}
	if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
		if (family == AF_INET6 && errno == EADDRNOTAVAIL) {
			close(fd);
			return -1;
		}
		perror("responder: bind");
		exit(1);
	}
	if (type == SOCK_STREAM && listen(fd, 1024) < 0) {
		perror("responder: listen");
		exit(1);
	}
	return fd;
}

static void serve_tcp(int lfd)
{
	char buf[4096];
	size_t used = 0;
	struct timeval tv = { .tv_sec = 1, .tv_usec = 0 };
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		return;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* Read until the end of the request head (bounded by the buffer and the timeout). */
	while (used < sizeof(buf) - 1) {
		ssize_t n = read(fd, buf + used, sizeof(buf) - 1 - used);

		if (n <= 0)
			break;
		used += (size_t)n;
		buf[used] = '\0';
		if (strstr(buf, "\r\n\r\n")) {
			ssize_t w = write(fd, RESPONSE, sizeof(RESPONSE) - 1);
			(void)w;
			break;
		}
	}
	close(fd);
}

static void serve_udp(int fd)
{
	char buf[2048];
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&peer, &len);

	if (n >= 0)
		sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	struct pollfd fds[4];
	nfds_t nfds = 2;
	nfds_t i;

	if (argc != 3) {
		fprintf(stderr, "usage: responder TCP_PORT UDP_PORT\n");
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Even slots TCP, odd slots UDP: IPv4, then IPv6 if there is any. */
	fds[0].fd = make_socket(AF_INET, SOCK_STREAM, parse_port(argv[1]));
	fds[1].fd = make_socket(AF_INET, SOCK_DGRAM, parse_port(argv[2]));
	fds[2].fd = make_socket(AF_INET6, SOCK_STREAM, parse_port(argv[1]));
	fds[3].fd = fds[2].fd < 0 ? -1 : make_socket(AF_INET6, SOCK_DGRAM, parse_port(argv[2]));
	if (fds[2].fd >= 0 && fds[3].fd >= 0)
		nfds = 4;
	else if (fds[2].fd >= 0)
		close(fds[2].fd);
	for (i = 0; i < nfds; i++)
		fds[i].events = POLLIN;
	printf("responder: tcp %s udp %s%s\n", argv[1], argv[2], nfds == 4 ? " (IPv4, IPv6)" : "");
	fflush(stdout);
	while (!stopping) {
		int n = poll(fds, nfds, 500);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("responder: poll");
			return 1;
		}
		for (i = 0; i < nfds; i++) {
			if (!(fds[i].revents & POLLIN))
				continue;
			if (i % 2 == 0)
				serve_tcp(fds[i].fd);
			else
				serve_udp(fds[i].fd);
		}
	}
	return 0;
}
