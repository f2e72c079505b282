// SPDX-License-Identifier: BSD-3-Clause
#include "boot.h"
#include "lapic.h"

static inline volatile uint32_t *lapic_reg(unsigned int off)
{
	return (volatile uint32_t *)(LAPIC_BASE + off);
}

void lapic_enable(void)
{
	*lapic_reg(LAPIC_TPR) = 0;
	*lapic_reg(LAPIC_SVR) = LAPIC_SVR_ENABLE | SPURIOUS_VECTOR;
}

uint32_t lapic_id(void)
{
	return *lapic_reg(LAPIC_ID) >> 24;
}

uint64_t irq_count(unsigned int vector)
{
	return __atomic_load_n(&irq_counts[vector & 0xff], __ATOMIC_RELAXED);
}
