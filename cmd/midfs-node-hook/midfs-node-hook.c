/*
 * midfs-node-hook: sshd's AuthorizedPrincipalsCommand on an enforcing node.
 *
 *   AuthorizedPrincipalsCommand /usr/bin/midfs-node-hook SOCKET %u %k
 *   AuthorizedPrincipalsCommandUser nobody
 *
 * sshd runs it at every certificate login, twice (for the key query and for
 * the signature), and waits for it. It decides nothing: it hands the login
 * (%u) and the certificate (%k, base64) to the node agent (`midfs node
 * start`) on SOCKET and prints what the agent answers, the login if the
 * certificate may use it here, or nothing. The agent decides (node/enforce)
 * from what it holds in memory.
 *
 * Why C, in a Go project: sshd starts a process per call, and on the
 * machines midfs was measured on any Go binary takes 8 ms or more to start
 * and exit (its runtime), against about 1 ms for this one, built static.
 * The budget for the hook is 10 ms per login, for both calls.
 *
 * It parses nothing it is sent: it copies bytes, with bounds, and exits 0
 * whether the agent allowed the login or not (sshd reads an empty answer
 * as a refusal). Anything that goes wrong (no agent, a hung agent, bad
 * arguments) prints nothing to standard output, a line to standard error,
 * and exits 1: the login is refused.
 *
 * The request is "USER\nCERT\n"; the answer, what sshd reads, is whole
 * lines, at most MAX_ANSWER bytes.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_USER 256
#define MAX_CERT (64 * 1024)
#define MAX_ANSWER 4096
/* A hung agent must not hold sshd's login for its LoginGraceTime. */
#define TIMEOUT_SECONDS 10

static int fail(const char *what, const char *detail)
{
	fprintf(stderr, "midfs-node-hook: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* one_line says whether s is non-empty, at most max bytes, with no newline. */
static int one_line(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);
	return n > 0 && n <= max && memchr(s, '\n', n) == NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return fail("usage: midfs-node-hook SOCKET USER CERT_BASE64 (sshd: AuthorizedPrincipalsCommand BIN SOCKET %u %k)", NULL);
	const char *path = argv[1], *user = argv[2], *cert = argv[3];
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(addr.sun_path))
		return fail("socket path too long", path);
	if (!one_line(user, MAX_USER) || !one_line(cert, MAX_CERT))
		return fail("bad USER or CERT_BASE64", NULL);
	memcpy(addr.sun_path, path, strlen(path));
	alarm(TIMEOUT_SECONDS); /* SIGALRM's default action ends the process */

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail("socket", strerror(errno));
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return fail("cannot reach the node agent (is midfs node start running?)", strerror(errno));
	if (write_all(fd, user, strlen(user)) < 0 || write_all(fd, "\n", 1) < 0 ||
	    write_all(fd, cert, strlen(cert)) < 0 || write_all(fd, "\n", 1) < 0)
		return fail("cannot send to the node agent", strerror(errno));
	shutdown(fd, SHUT_WR);

	/* The whole answer first: sshd must see all of it or nothing. */
	char answer[MAX_ANSWER + 1];
	size_t n = 0;
	for (;;) {
		ssize_t r = read(fd, answer + n, sizeof(answer) - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail("cannot read the node agent's answer", strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > MAX_ANSWER)
			return fail("the node agent's answer is too long", NULL);
	}
	if (n > 0 && answer[n - 1] != '\n')
		return fail("the node agent's answer was cut short", NULL);
	if (write_all(STDOUT_FILENO, answer, n) < 0)
		return fail("cannot write the answer", strerror(errno));
	return 0;
}
