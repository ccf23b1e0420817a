/*
 * sched_sample.c -- every millisecond, read how long each given task has run
 * and how long it has waited in a run queue, for bench/runqueue.sh.
 *
 *   sched_sample SECONDS OUTFILE /proc/PID/task/TID ...
 *
 * Each line of OUTFILE: "epoch index cpu_ns run_delay_ns", index being the
 * task's position in the arguments (from 0).  The two counters are the first
 * two fields of the task's schedstat (the kernel's CONFIG_SCHED_INFO, on in
 * Debian's kernels).  Samples are kept in memory and written at the end, so
 * that the sampler itself does no I/O while it samples.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef struct Sample
{
	double		t;
	int			task;
	unsigned long long cpu_ns;
	unsigned long long delay_ns;
} Sample;

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	double		seconds,
				t0;
	int			ntasks = argc - 3;
	int		   *fds;
	size_t		cap,
				n = 0;
	Sample	   *samples;
	FILE	   *out;
	struct timespec tick = {0, 1000000};

	if (argc < 4)
	{
		fprintf(stderr, "usage: %s SECONDS OUTFILE TASKDIR...\n", argv[0]);
		return 2;
	}
	seconds = atof(argv[1]);
	cap = (size_t) (seconds * 1100 + 10) * ntasks;
	samples = malloc(cap * sizeof(Sample));
	fds = malloc(ntasks * sizeof(int));
	if (samples == NULL || fds == NULL)
		return 1;
	for (int i = 0; i < ntasks; i++)
	{
		char		path[512];

		snprintf(path, sizeof(path), "%s/schedstat", argv[3 + i]);
		fds[i] = open(path, O_RDONLY);
	}
	t0 = now();
	while (now() - t0 < seconds && n + ntasks <= cap)
	{
		double		t = now();

		for (int i = 0; i < ntasks; i++)
		{
			char		buf[128];
			ssize_t		len = fds[i] < 0 ? -1 : pread(fds[i], buf, sizeof(buf) - 1, 0);
			Sample	   *s = &samples[n];

			if (len <= 0)
				continue;		/* the task has exited */
			buf[len] = '\0';
			if (sscanf(buf, "%llu %llu", &s->cpu_ns, &s->delay_ns) != 2)
				continue;
			s->t = t;
			s->task = i;
			n++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, 0, &tick, NULL);
	}
	out = fopen(argv[2], "w");
	if (out == NULL)
		return 1;
	for (size_t i = 0; i < n; i++)
		fprintf(out, "%.6f %d %llu %llu\n", samples[i].t, samples[i].task,
				samples[i].cpu_ns, samples[i].delay_ns);
	return fclose(out) == 0 ? 0 : 1;
}
