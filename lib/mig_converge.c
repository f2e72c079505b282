/* SPDX-License-Identifier: BSD-3-Clause */
#include <stdio.h>
#include <string.h>

#include "ferry/mig_converge.h"

/* Weight of the newest sample in the moving averages. */
#define MIG_EWMA_NEW	0.5

void mig_converge_init(struct mig_converge *c, uint64_t downtime_limit_ms,
		       uint64_t max_bandwidth)
{
	memset(c, 0, sizeof(*c));
	c->downtime_limit_ms = downtime_limit_ms;
	c->max_bandwidth = max_bandwidth;
}

void mig_converge_sample(struct mig_converge *c, uint64_t sent,
			 uint64_t elapsed_ns, uint64_t dirtied)
{
	double secs = (double)elapsed_ns / 1e9;
	double bw, dr;

	c->iterations++;
	if (secs <= 0)
		return;
	bw = (double)sent / secs;
	dr = (double)dirtied / secs;
	/* A tiny iteration says little about bandwidth: keep the old one. */
	if (sent >= (1u << 20) || c->bandwidth == 0)
		c->bandwidth = c->bandwidth == 0 ? bw :
			MIG_EWMA_NEW * bw + (1 - MIG_EWMA_NEW) * c->bandwidth;
	c->dirty_rate = c->iterations == 1 ? dr :
		MIG_EWMA_NEW * dr + (1 - MIG_EWMA_NEW) * c->dirty_rate;
}

bool mig_converge_ready(struct mig_converge *c, uint64_t remaining)
{
	double bw = c->bandwidth;

	c->remaining = remaining + MIG_STATE_ALLOWANCE;
	if (c->max_bandwidth && (bw == 0 || bw > (double)c->max_bandwidth))
		bw = (double)c->max_bandwidth;
	if (bw <= 0) {
		c->expected_downtime_ms = UINT64_MAX;
		return false;
	}
	/* Rounded up: any data left takes a millisecond at least, so a
	 * downtime-limit of 0 means "never stop the guest". */
	{
		double ms = (double)c->remaining * 1000.0 / bw;

		c->expected_downtime_ms = (uint64_t)ms;
		if ((double)c->expected_downtime_ms < ms)
			c->expected_downtime_ms++;
	}
	return c->expected_downtime_ms <= c->downtime_limit_ms;
}

void mig_converge_reason(const struct mig_converge *c, char *buf, size_t len)
{
	if (c->bandwidth == 0) {
		snprintf(buf, len, "measuring bandwidth");
	} else if (c->expected_downtime_ms <= c->downtime_limit_ms) {
		snprintf(buf, len, "converged");
	} else if (c->dirty_rate >= c->bandwidth) {
		snprintf(buf, len, "not converging: the guest and devices "
			 "dirty %.1f MB/s, at or above the %.1f MB/s "
			 "bandwidth; expected downtime %llu ms > limit %llu ms",
			 c->dirty_rate / 1e6, c->bandwidth / 1e6,
			 (unsigned long long)c->expected_downtime_ms,
			 (unsigned long long)c->downtime_limit_ms);
	} else {
		snprintf(buf, len, "iterating: expected downtime %llu ms > "
			 "limit %llu ms", (unsigned long long)c->expected_downtime_ms,
			 (unsigned long long)c->downtime_limit_ms);
	}
}

uint64_t mig_converge_throttle_ns(const struct mig_converge *c,
				  uint64_t sent, uint64_t elapsed_ns)
{
	uint64_t want_ns;

	if (!c->max_bandwidth)
		return 0;
	want_ns = (uint64_t)((double)sent * 1e9 / (double)c->max_bandwidth);
	return want_ns > elapsed_ns ? want_ns - elapsed_ns : 0;
}
