/*
 * memory.c -- busy processes that differ only in the memory they touch,
 * for bench/neighbours.sh, forever:
 *   hot FILE  pread the first 8 kB of FILE again and again: the system calls
 *             and the copy of a `read` neighbour (dd), from one page that
 *             stays in the CPU's caches
 *   walk      read and write a 256 MB buffer, touched once beforehand, from
 *             end to end: memory traffic without the kernel
 *   scatter   radix passes over ten million 16-byte records (two 160 MB
 *             arrays, touched once beforehand), scattering them by one byte
 *             of their key: the traffic of a pass's sort of its pairs
 * Does a neighbour cost the workload by the memory it streams through, or by
 * its system calls?
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct
{
	uint64_t	key;
	uint64_t	payload;
} Record;

static int
hot(const char *path)
{
	char		buf[8192];
	int			fd = open(path, O_RDONLY);

	if (fd < 0)
		return 1;
	for (;;)
		if (pread(fd, buf, sizeof buf, 0) < 0)
			return 1;
}

static int
walk(void)
{
	const size_t n = (256u << 20) / sizeof(uint64_t);
	uint64_t   *p = malloc(n * sizeof(uint64_t));
	volatile uint64_t sum = 0;

	if (p == NULL)
		return 1;
	memset(p, 1, n * sizeof(uint64_t));
	for (;;)
		for (size_t i = 0; i < n; i++)
		{
			sum += p[i];
			p[i] = sum;
		}
}

static int
scatter(void)
{
	const size_t n = 10000000;
	Record	   *from = malloc(n * sizeof(Record));
	Record	   *to = malloc(n * sizeof(Record));
	uint64_t	x = 88172645463325252ull;

	if (from == NULL || to == NULL)
		return 1;
	for (size_t i = 0; i < n; i++)
	{
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		from[i].key = x;
		from[i].payload = i;
	}
	memset(to, 0, n * sizeof(Record));
	for (int shift = 0;; shift = (shift + 8) % 64)
	{
		size_t		count[256] = {0};
		size_t		next[256];
		size_t		start = 0;
		Record	   *swap;

		for (size_t i = 0; i < n; i++)
			count[(from[i].key >> shift) & 255]++;
		for (int b = 0; b < 256; b++)
		{
			next[b] = start;
			start += count[b];
		}
		for (size_t i = 0; i < n; i++)
			to[next[(from[i].key >> shift) & 255]++] = from[i];
		swap = from;
		from = to;
		to = swap;
	}
}

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "hot") == 0)
		return hot(argv[2]);
	if (argc == 2 && strcmp(argv[1], "walk") == 0)
		return walk();
	if (argc == 2 && strcmp(argv[1], "scatter") == 0)
		return scatter();
	return 2;
}
