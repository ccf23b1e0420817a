/*
 * faults.c -- a busy process whose work is page faults, for
 * bench/neighbours.sh: it maps 32 MB of fresh memory, writes one byte of
 * each 4 kB page (a fault each), unmaps it, and starts again, forever.
 * On this project's virtual machine a first touch of a page costs about
 * 12 us, a hundred times a syscall: this asks whether such faults, which a
 * worker takes on fresh memory and on shared buffers it has not touched
 * yet, slow the other processes more than plain computing does.
 */
#include <stddef.h>
#include <sys/mman.h>

int
main(void)
{
	const size_t size = 32 << 20;

	for (;;)
	{
		char	   *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
							 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return 1;
		for (size_t i = 0; i < size; i += 4096)
			p[i] = 1;
		munmap(p, size);
	}
}
