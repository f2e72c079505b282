/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The VFIO migration v2 state machine as two tables.
 *
 * next_hop[cur][target] is the first arc of the shortest path from cur to
 * target when every optional state (RUNNING_P2P, PRE_COPY, PRE_COPY_P2P)
 * is available, written from the path list in the uAPI comment. A device
 * that lacks an optional state skips it: from the unsupported hop we look
 * up the table again towards the same target, which is exactly how the
 * kernel collapses RUNNING_P2P into RUNNING (or STOP) for devices without
 * P2P. ERROR in the table means "no path" (STOP_COPY -> PRE_COPY*).
 */
#include <errno.h>

#include "ferry/mig_fsm.h"
#include "ferry/util.h"

#define S_ERROR		VFU_MIG_STATE_ERROR
#define S_STOP		VFU_MIG_STATE_STOP
#define S_RUNNING	VFU_MIG_STATE_RUNNING
#define S_STOP_COPY	VFU_MIG_STATE_STOP_COPY
#define S_RESUMING	VFU_MIG_STATE_RESUMING
#define S_RUN_P2P	VFU_MIG_STATE_RUNNING_P2P
#define S_PRE_COPY	VFU_MIG_STATE_PRE_COPY
#define S_PRE_P2P	VFU_MIG_STATE_PRE_COPY_P2P

static const uint8_t next_hop[VFU_MIG_STATE_NR][VFU_MIG_STATE_NR] = {
	[S_STOP] = {
		[S_STOP] = S_STOP,
		[S_RUNNING] = S_RUN_P2P,
		[S_PRE_COPY] = S_RUN_P2P,
		[S_PRE_P2P] = S_RUN_P2P,
		[S_STOP_COPY] = S_STOP_COPY,
		[S_RESUMING] = S_RESUMING,
		[S_RUN_P2P] = S_RUN_P2P,
		[S_ERROR] = S_ERROR,
	},
	[S_RUNNING] = {
		[S_STOP] = S_RUN_P2P,
		[S_RUNNING] = S_RUNNING,
		[S_PRE_COPY] = S_PRE_COPY,
		[S_PRE_P2P] = S_RUN_P2P,
		[S_STOP_COPY] = S_RUN_P2P,
		[S_RESUMING] = S_RUN_P2P,
		[S_RUN_P2P] = S_RUN_P2P,
		[S_ERROR] = S_ERROR,
	},
	[S_PRE_COPY] = {
		[S_STOP] = S_RUNNING,
		[S_RUNNING] = S_RUNNING,
		[S_PRE_COPY] = S_PRE_COPY,
		[S_PRE_P2P] = S_PRE_P2P,
		[S_STOP_COPY] = S_PRE_P2P,
		[S_RESUMING] = S_RUNNING,
		[S_RUN_P2P] = S_RUNNING,
		[S_ERROR] = S_ERROR,
	},
	[S_PRE_P2P] = {
		[S_STOP] = S_RUN_P2P,
		[S_RUNNING] = S_RUN_P2P,
		[S_PRE_COPY] = S_PRE_COPY,
		[S_PRE_P2P] = S_PRE_P2P,
		[S_STOP_COPY] = S_STOP_COPY,
		[S_RESUMING] = S_RUN_P2P,
		[S_RUN_P2P] = S_RUN_P2P,
		[S_ERROR] = S_ERROR,
	},
	[S_STOP_COPY] = {
		[S_STOP] = S_STOP,
		[S_RUNNING] = S_STOP,
		[S_PRE_COPY] = S_ERROR,		/* forbidden by the uAPI */
		[S_PRE_P2P] = S_ERROR,		/* forbidden by the uAPI */
		[S_STOP_COPY] = S_STOP_COPY,
		[S_RESUMING] = S_STOP,
		[S_RUN_P2P] = S_STOP,
		[S_ERROR] = S_ERROR,
	},
	[S_RESUMING] = {
		[S_STOP] = S_STOP,
		[S_RUNNING] = S_STOP,
		[S_PRE_COPY] = S_STOP,
		[S_PRE_P2P] = S_STOP,
		[S_STOP_COPY] = S_STOP,
		[S_RESUMING] = S_RESUMING,
		[S_RUN_P2P] = S_STOP,
		[S_ERROR] = S_ERROR,
	},
	[S_RUN_P2P] = {
		[S_STOP] = S_STOP,
		[S_RUNNING] = S_RUNNING,
		[S_PRE_COPY] = S_RUNNING,
		[S_PRE_P2P] = S_PRE_P2P,
		[S_STOP_COPY] = S_STOP,
		[S_RESUMING] = S_STOP,
		[S_RUN_P2P] = S_RUN_P2P,
		[S_ERROR] = S_ERROR,
	},
	[S_ERROR] = {
		[S_STOP] = S_ERROR,
		[S_RUNNING] = S_ERROR,
		[S_PRE_COPY] = S_ERROR,
		[S_PRE_P2P] = S_ERROR,
		[S_STOP_COPY] = S_ERROR,
		[S_RESUMING] = S_ERROR,
		[S_RUN_P2P] = S_ERROR,
		[S_ERROR] = S_ERROR,
	},
};

/*
 * Migration flags a state needs. ERROR needs "everything", so it is never
 * a valid current or target state: it is only entered by a failed arc and
 * left by DEVICE_RESET, neither of which goes through this table.
 */
static const uint64_t state_needs[VFU_MIG_STATE_NR] = {
	[S_ERROR] = UINT64_MAX,
	[S_STOP] = VFU_MIGRATION_STOP_COPY,
	[S_RUNNING] = VFU_MIGRATION_STOP_COPY,
	[S_STOP_COPY] = VFU_MIGRATION_STOP_COPY,
	[S_RESUMING] = VFU_MIGRATION_STOP_COPY,
	[S_RUN_P2P] = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P,
	[S_PRE_COPY] = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_PRE_COPY,
	[S_PRE_P2P] = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		      VFU_MIGRATION_PRE_COPY,
};

/* Arcs a driver must implement, per capability (the uAPI's list). */
struct mig_arc {
	uint8_t from, to;
	uint64_t needs;		/* all of these flags */
	uint64_t unless;	/* and none of these */
};

static const struct mig_arc required_arcs[] = {
	/* base */
	{ S_RESUMING, S_STOP, VFU_MIGRATION_STOP_COPY, 0 },
	{ S_STOP, S_RESUMING, VFU_MIGRATION_STOP_COPY, 0 },
	{ S_STOP, S_STOP_COPY, VFU_MIGRATION_STOP_COPY, 0 },
	{ S_STOP_COPY, S_STOP, VFU_MIGRATION_STOP_COPY, 0 },
	/* +P2P */
	{ S_RUNNING, S_RUN_P2P, VFU_MIGRATION_P2P, 0 },
	{ S_RUN_P2P, S_RUNNING, VFU_MIGRATION_P2P, 0 },
	{ S_RUN_P2P, S_STOP, VFU_MIGRATION_P2P, 0 },
	{ S_STOP, S_RUN_P2P, VFU_MIGRATION_P2P, 0 },
	/* +PRE_COPY (with or without P2P) */
	{ S_RUNNING, S_PRE_COPY, VFU_MIGRATION_PRE_COPY, 0 },
	{ S_PRE_COPY, S_RUNNING, VFU_MIGRATION_PRE_COPY, 0 },
	{ S_PRE_COPY, S_STOP_COPY, VFU_MIGRATION_PRE_COPY,
	  VFU_MIGRATION_P2P },
	/* both */
	{ S_PRE_COPY, S_PRE_P2P, VFU_MIGRATION_PRE_COPY | VFU_MIGRATION_P2P, 0 },
	{ S_PRE_P2P, S_PRE_COPY, VFU_MIGRATION_PRE_COPY | VFU_MIGRATION_P2P, 0 },
	{ S_PRE_P2P, S_RUN_P2P, VFU_MIGRATION_PRE_COPY | VFU_MIGRATION_P2P, 0 },
	{ S_PRE_P2P, S_STOP_COPY, VFU_MIGRATION_PRE_COPY | VFU_MIGRATION_P2P, 0 },
	{ S_RUN_P2P, S_PRE_P2P, VFU_MIGRATION_PRE_COPY | VFU_MIGRATION_P2P, 0 },
	/* without P2P, RUNNING and STOP are adjacent */
	{ S_RUNNING, S_STOP, VFU_MIGRATION_STOP_COPY, VFU_MIGRATION_P2P },
	{ S_STOP, S_RUNNING, VFU_MIGRATION_STOP_COPY, VFU_MIGRATION_P2P },
};

bool mig_fsm_is_saving(uint32_t s)
{
	return s == S_PRE_COPY || s == S_PRE_P2P || s == S_STOP_COPY;
}

bool mig_fsm_state_supported(uint64_t flags, uint32_t s)
{
	if (!(flags & VFU_MIGRATION_STOP_COPY) || s >= VFU_MIG_STATE_NR)
		return false;
	return (state_needs[s] & flags) == state_needs[s];
}

bool mig_fsm_arc_valid(uint64_t flags, uint32_t from, uint32_t to)
{
	if (!mig_fsm_state_supported(flags, from) ||
	    !mig_fsm_state_supported(flags, to))
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(required_arcs); i++) {
		const struct mig_arc *a = &required_arcs[i];

		if (a->from == from && a->to == to &&
		    (flags & a->needs) == a->needs && !(flags & a->unless))
			return true;
	}
	return false;
}

int mig_fsm_next_state(uint64_t flags, uint32_t cur, uint32_t target,
		       uint32_t *next)
{
	uint32_t n;

	if (!mig_fsm_state_supported(flags, cur) ||
	    !mig_fsm_state_supported(flags, target))
		return -EINVAL;
	n = next_hop[cur][target];
	/* Skip unsupported hops; ERROR (no path) ends the walk, as the
	 * kernel's loop was fixed to do. */
	while (n != S_ERROR && !mig_fsm_state_supported(flags, n))
		n = next_hop[n][target];
	if (n == S_ERROR)
		return -EINVAL;
	*next = n;
	return 0;
}
