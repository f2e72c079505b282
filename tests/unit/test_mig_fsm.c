/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The migration state machine against two independent oracles:
 *  1. next-hop tables written by hand from the uAPI's path list, one per
 *     capability set ('-' = EINVAL);
 *  2. a breadth-first search over the uAPI's "arcs a driver must
 *     implement" list, with saving states forbidden in the interior.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ferry/mig_fsm.h"
#include "ferry/util.h"

#define SC	VFU_MIGRATION_STOP_COPY
#define P2P	VFU_MIGRATION_P2P
#define PRE	VFU_MIGRATION_PRE_COPY
#define NS	VFU_MIG_STATE_NR

/* States: 0 ERROR 1 STOP 2 RUNNING 3 STOP_COPY 4 RESUMING 5 RUNNING_P2P
 * 6 PRE_COPY 7 PRE_COPY_P2P. Row = current, column = target. */
struct expect {
	uint64_t flags;
	const char *rows[NS];
};

static const struct expect expected[] = {
	{ SC, {
		"--------",
		"-1234---",
		"-1211---",
		"-1131---",
		"-1114---",
		"--------",
		"--------",
		"--------",
	} },
	{ SC | P2P, {
		"--------",
		"-15345--",
		"-52555--",
		"-11311--",
		"-11141--",
		"-12115--",
		"--------",
		"--------",
	} },
	{ SC | PRE, {
		"--------",
		"-1234-2-",
		"-1211-6-",
		"-1131---",
		"-1114-1-",
		"--------",
		"-2232-6-",
		"--------",
	} },
	{ SC | P2P | PRE, {
		"--------",
		"-1534555",
		"-5255565",
		"-11311--",
		"-1114111",
		"-1211527",
		"-2272267",
		"-5535567",
	} },
};

static void test_fsm_table(void **state)
{
	for (size_t k = 0; k < ARRAY_SIZE(expected); k++) {
		const struct expect *e = &expected[k];

		for (uint32_t cur = 0; cur < NS; cur++) {
			for (uint32_t tgt = 0; tgt < NS; tgt++) {
				char want = e->rows[cur][tgt];
				uint32_t next = 99;
				int ret;

				ret = mig_fsm_next_state(e->flags, cur, tgt,
							 &next);
				if (want == '-') {
					if (ret != -EINVAL)
						fail_msg("flags %#lx %u->%u: "
							 "want EINVAL got %d/%u",
							 (unsigned long)e->flags,
							 cur, tgt, ret, next);
				} else if (ret || next != (uint32_t)(want - '0')) {
					fail_msg("flags %#lx %u->%u: want %c "
						 "got %d/%u",
						 (unsigned long)e->flags, cur,
						 tgt, want, ret, next);
				}
			}
		}
	}
}

/* The uAPI's required-arc list, restated for the oracle. */
struct arc {
	uint32_t from, to;
	uint64_t needs, unless;
};

static const struct arc arcs[] = {
	{ 4, 1, SC, 0 }, { 1, 4, SC, 0 }, { 1, 3, SC, 0 }, { 3, 1, SC, 0 },
	{ 2, 5, P2P, 0 }, { 5, 2, P2P, 0 }, { 5, 1, P2P, 0 }, { 1, 5, P2P, 0 },
	{ 2, 6, PRE, 0 }, { 6, 2, PRE, 0 }, { 6, 3, PRE, P2P },
	{ 6, 7, PRE | P2P, 0 }, { 7, 6, PRE | P2P, 0 }, { 7, 5, PRE | P2P, 0 },
	{ 7, 3, PRE | P2P, 0 }, { 5, 7, PRE | P2P, 0 },
	{ 2, 1, SC, P2P }, { 1, 2, SC, P2P },
};

static bool oracle_arc(uint64_t flags, uint32_t a, uint32_t b)
{
	for (size_t i = 0; i < ARRAY_SIZE(arcs); i++)
		if (arcs[i].from == a && arcs[i].to == b &&
		    (flags & arcs[i].needs) == arcs[i].needs &&
		    !(flags & arcs[i].unless))
			return true;
	return false;
}

static bool saving(uint32_t s)
{
	return s == 3 || s == 6 || s == 7;
}

/* Shortest number of arcs from a to t, saving states only at the ends;
 * -1 if unreachable. */
static int oracle_dist(uint64_t flags, uint32_t a, uint32_t t)
{
	int dist[NS];
	uint32_t q[NS];
	size_t head = 0, tail = 0;

	/* Forbidden outright by the uAPI, whatever path might exist. */
	if (a == 3 && (t == 6 || t == 7))
		return -1;
	for (uint32_t i = 0; i < NS; i++)
		dist[i] = -1;
	dist[a] = 0;
	q[tail++] = a;
	while (head < tail) {
		uint32_t u = q[head++];

		if (u == t)
			return dist[u];
		/* Saving states may not be passed through, unless the
		 * whole path stays inside the saving group. */
		if (u != a && saving(u) && !(saving(a) && saving(t)))
			continue;
		for (uint32_t v = 0; v < NS; v++) {
			if (dist[v] < 0 && oracle_arc(flags, u, v)) {
				dist[v] = dist[u] + 1;
				q[tail++] = v;
			}
		}
	}
	return -1;
}

static void test_fsm_bfs(void **state)
{
	for (size_t k = 0; k < ARRAY_SIZE(expected); k++) {
		uint64_t flags = expected[k].flags;

		for (uint32_t cur = 0; cur < NS; cur++) {
			for (uint32_t tgt = 0; tgt < NS; tgt++) {
				bool sup = mig_fsm_state_supported(flags, cur) &&
					   mig_fsm_state_supported(flags, tgt);
				int d = sup && tgt ? oracle_dist(flags, cur, tgt)
						   : -1;
				uint32_t next;
				int ret = mig_fsm_next_state(flags, cur, tgt,
							     &next);

				if (d < 0) {
					assert_int_equal(ret, -EINVAL);
					continue;
				}
				if (ret)
					fail_msg("flags %#lx %u->%u: d %d ret %d",
						 (unsigned long)flags, cur, tgt,
						 d, ret);
				if (d == 0) {
					assert_int_equal(next, cur);
					continue;
				}
				/* One arc, and on a shortest path. */
				assert_true(oracle_arc(flags, cur, next));
				assert_true(mig_fsm_arc_valid(flags, cur, next));
				assert_true(next == tgt || !saving(next) ||
					    (saving(cur) && saving(tgt)));
				assert_int_equal(oracle_dist(flags, next, tgt),
						 d - 1);
			}
		}
	}
}

static void test_fsm_arcs_match_oracle(void **state)
{
	for (size_t k = 0; k < ARRAY_SIZE(expected); k++)
		for (uint32_t a = 0; a < NS; a++)
			for (uint32_t b = 0; b < NS; b++)
				assert_int_equal(
					mig_fsm_arc_valid(expected[k].flags, a, b),
					oracle_arc(expected[k].flags, a, b) &&
					mig_fsm_state_supported(expected[k].flags, a) &&
					mig_fsm_state_supported(expected[k].flags, b));
}

static void test_fsm_invalid(void **state)
{
	const uint32_t bad[] = { NS, 9, 100, UINT32_MAX };
	uint32_t next;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		assert_int_equal(mig_fsm_next_state(SC | P2P | PRE, bad[i], 1,
						    &next), -EINVAL);
		assert_int_equal(mig_fsm_next_state(SC | P2P | PRE, 1, bad[i],
						    &next), -EINVAL);
		assert_false(mig_fsm_state_supported(SC | P2P | PRE, bad[i]));
		assert_false(mig_fsm_is_saving(bad[i]));
	}
	/* STOP_COPY is mandatory: nothing exists without it. */
	assert_int_equal(mig_fsm_next_state(P2P | PRE, 2, 1, &next), -EINVAL);
	assert_false(mig_fsm_state_supported(0, VFU_MIG_STATE_RUNNING));
	/* STOP_COPY -> PRE_COPY is forbidden; ERROR is never a target nor
	 * a place to leave from. */
	assert_int_equal(mig_fsm_next_state(SC | PRE, 3, 6, &next), -EINVAL);
	assert_int_equal(mig_fsm_next_state(SC | PRE, 2, 0, &next), -EINVAL);
	assert_int_equal(mig_fsm_next_state(SC | PRE, 0, 2, &next), -EINVAL);
	assert_true(mig_fsm_is_saving(VFU_MIG_STATE_PRE_COPY));
	assert_true(mig_fsm_is_saving(VFU_MIG_STATE_PRE_COPY_P2P));
	assert_true(mig_fsm_is_saving(VFU_MIG_STATE_STOP_COPY));
	assert_false(mig_fsm_is_saving(VFU_MIG_STATE_RUNNING));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fsm_table),
		cmocka_unit_test(test_fsm_bfs),
		cmocka_unit_test(test_fsm_arcs_match_oracle),
		cmocka_unit_test(test_fsm_invalid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
