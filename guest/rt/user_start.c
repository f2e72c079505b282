// SPDX-License-Identifier: BSD-3-Clause
/* First ring-3 code: calibrate the TSC, run the workload, exit with its
 * result. */
#include "boot.h"
#include "console.h"
#include "crc.h"
#include "stall.h"

void user_start(void)
{
	int rc;

	tsc_calibrate();
	if (crc32c_selftest()) {
		say("FAIL crc32c_selftest max_stall_us=0");
		guest_exit(1);
	}
	rc = guest_main();
	guest_exit(rc ? 1 : 0);
}
