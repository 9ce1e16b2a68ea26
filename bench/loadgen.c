/* loadgen: the sequential load generator of the data-path benchmark.
 *
 *   loadgen tcp|udp ADDR[,ADDR...] PORT COUNT MAX_SECONDS
 *
 * ADDR: IPv4 or IPv6 (all of one family).
 * Several addresses (up to 16): tcp sends each new connection to one of them chosen at
 * random (fixed seed), the spread a load balancer gives; udp uses the first only.
 * tcp: COUNT sequential HTTP requests, each on a NEW connection: connect, send a GET,
 *      read the response to EOF (the server closes), close. The client closes with
 *      SO_LINGER 0 (an RST once the response is in), so no side keeps a TIME_WAIT
 *      socket and ports never run out over many runs.
 * udp: one connected socket, COUNT sequential request/response exchanges; a reply that
 *      does not come within the receive timeout counts as an error.
 * Stops at MAX_SECONDS even if COUNT is not reached. Latency per request with
 * CLOCK_MONOTONIC; prints one JSON line:
 *   {"count","errors","seconds","rps","p50_us","p99_us"}
 * count = requests attempted, errors = failed ones, rps and percentiles over the
 * successful ones. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define TCP_TIMEOUT_MS 2000
#define UDP_TIMEOUT_MS 500

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
}

/* One destination of either family. */
struct dest {
	struct sockaddr_storage sa;
	socklen_t len;
};

static int parse_dest(const char *s, int port, struct dest *d)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)&d->sa;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&d->sa;

	memset(d, 0, sizeof(*d));
	if (inet_pton(AF_INET, s, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((unsigned short)port);
		d->len = sizeof(*in4);
		return 0;
	}
	if (inet_pton(AF_INET6, s, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((unsigned short)port);
		d->len = sizeof(*in6);
		return 0;
	}
	return -1;
}

static int tcp_request(const struct dest *dst, const char *req, size_t req_len)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	char buf[1024];
	size_t got = 0;
	int ok = 0;
	int fd = socket(dst->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return 0;
	set_timeouts(fd, TCP_TIMEOUT_MS);
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (connect(fd, (const struct sockaddr *)&dst->sa, dst->len) < 0)
		goto out;
	if (write(fd, req, req_len) != (ssize_t)req_len)
		goto out;
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);

		if (n < 0)
			goto out;
		if (n == 0)
			break;
		got += (size_t)n;
		if (got >= sizeof(buf) - 1)
			got = 16; /* keep the status line; a long body is only drained */
	}
	buf[got] = '\0';
	ok = strncmp(buf, "HTTP/1.1 200 ", 13) == 0;
out:
	close(fd);
	return ok;
}

static int udp_request(int fd, unsigned seq)
{
	char out[32], in[64];
	int len = snprintf(out, sizeof(out), "req-%u", seq);
	ssize_t n;

	if (send(fd, out, (size_t)len, 0) != len)
		return 0;
	for (;;) {
		n = recv(fd, in, sizeof(in), 0);
		if (n < 0)
			return 0; /* timeout (EAGAIN) or an ICMP error */
		if (n == len && memcmp(in, out, (size_t)len) == 0)
			return 1;
		/* a late reply to an earlier, timed-out request: skip it */
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double percentile(const double *sorted, long n, double p)
{
	long i;

	if (n == 0)
		return 0.0;
	i = (long)(p * (double)(n - 1) + 0.5);
	return sorted[i];
}

int main(int argc, char **argv)
{
	struct dest dsts[16], dst;
	char req[256], addrs[256], *tok, *save = NULL;
	unsigned seed = 12345;
	int ndst = 0;
	double *lat, start, deadline, elapsed, max_s;
	long count, i, ok = 0, attempted = 0;
	int tcp, udp_fd = -1, req_len, port;

	if (argc != 6 || (strcmp(argv[1], "tcp") && strcmp(argv[1], "udp"))) {
		fprintf(stderr, "usage: loadgen tcp|udp ADDR PORT COUNT MAX_SECONDS\n");
		return 2;
	}
	tcp = strcmp(argv[1], "tcp") == 0;
	port = atoi(argv[3]);
	count = atol(argv[4]);
	max_s = atof(argv[5]);
	snprintf(addrs, sizeof(addrs), "%s", argv[2]);
	for (tok = strtok_r(addrs, ",", &save); tok && ndst < 16; tok = strtok_r(NULL, ",", &save)) {
		if (parse_dest(tok, port, &dsts[ndst]) < 0 ||
		    (ndst > 0 && dsts[ndst].sa.ss_family != dsts[0].sa.ss_family))
			ndst = -100;
		ndst++;
	}
	if (ndst < 1 || port < 1 || port > 65535 || count < 1 || count > 10000000 ||
	    !(max_s > 0 && max_s <= 600)) {
		fprintf(stderr, "loadgen: bad arguments\n");
		return 2;
	}
	dst = dsts[0];
	lat = calloc((size_t)count, sizeof(*lat));
	if (!lat) {
		perror("loadgen: calloc");
		return 1;
	}
	req_len = snprintf(req, sizeof(req),
			   "GET / HTTP/1.1\r\nHost: bench:%d\r\nConnection: close\r\n\r\n",
			   port);
	if (!tcp) {
		udp_fd = socket(dst.sa.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (udp_fd < 0 || connect(udp_fd, (struct sockaddr *)&dst.sa, dst.len) < 0) {
			perror("loadgen: udp socket");
			return 1;
		}
		set_timeouts(udp_fd, UDP_TIMEOUT_MS);
	}
	start = now_s();
	deadline = start + max_s;
	for (i = 0; i < count; i++) {
		double t0 = now_s(), t1;
		int good;

		if (t0 >= deadline)
			break;
		good = tcp ? tcp_request(&dsts[ndst > 1 ? rand_r(&seed) % ndst : 0], req,
					 (size_t)req_len)
			   : udp_request(udp_fd, (unsigned)i);
		t1 = now_s();
		attempted++;
		if (good)
			lat[ok++] = (t1 - t0) * 1e6;
	}
	elapsed = now_s() - start;
	if (udp_fd >= 0)
		close(udp_fd);
	qsort(lat, (size_t)ok, sizeof(*lat), cmp_double);
	printf("{\"count\": %ld, \"errors\": %ld, \"seconds\": %.4f, \"rps\": %.1f, "
	       "\"p50_us\": %.1f, \"p99_us\": %.1f}\n",
	       attempted, attempted - ok, elapsed, elapsed > 0 ? (double)ok / elapsed : 0.0,
	       percentile(lat, ok, 0.50), percentile(lat, ok, 0.99));
	free(lat);
	return 0;
}
