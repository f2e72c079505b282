/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The VFIO migration v2 state machine, as tables.
 *
 * States and their meaning are the kernel's (enum vfu_mig_state mirrors
 * enum vfio_device_mig_state). A device advertises VFU_MIGRATION_*
 * flags; STOP_COPY is mandatory and brings STOP, STOP_COPY and RESUMING;
 * P2P adds RUNNING_P2P; PRE_COPY adds PRE_COPY; both add PRE_COPY_P2P.
 * RUNNING and ERROR always exist.
 *
 * mig_fsm_next_state() gives the first arc of the shortest path from cur
 * to target that uses only supported states and never passes through a
 * saving state (PRE_COPY, PRE_COPY_P2P, STOP_COPY) in its interior; this
 * is what the kernel's vfio_mig_get_next_state() computes. A driver
 * performs arcs one at a time until it reaches target.
 */
#ifndef FERRY_MIG_FSM_H
#define FERRY_MIG_FSM_H

#include <stdbool.h>
#include <stdint.h>

#include "ferry/vfio_user.h"

/* Is state s available to a device with these migration flags? */
bool mig_fsm_state_supported(uint64_t flags, uint32_t s);

/* Is from -> to a single arc a device with these flags must implement? */
bool mig_fsm_arc_valid(uint64_t flags, uint32_t from, uint32_t to);

/*
 * Next state on the way from cur to target. 0 and *next (== target when
 * one arc suffices, == cur when cur == target), or -EINVAL when either
 * state is unknown or unsupported, target is ERROR, or no path exists
 * (e.g. STOP_COPY -> PRE_COPY).
 */
int mig_fsm_next_state(uint64_t flags, uint32_t cur, uint32_t target,
		       uint32_t *next);

/* PRE_COPY, PRE_COPY_P2P or STOP_COPY. */
bool mig_fsm_is_saving(uint32_t s);

#endif /* FERRY_MIG_FSM_H */
