/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * 8250/16550-style UART at COM1 (0x3F8), output only: what the guest
 * writes to THR goes to out_fd; the line status always reports an empty
 * transmitter and no received data; no interrupts are raised.
 */
#ifndef FERRY_VMM_SERIAL_H
#define FERRY_VMM_SERIAL_H

#include <stdbool.h>
#include <stddef.h>

struct vm;
struct serial;

#define SERIAL_COM1_BASE	0x3f8

/* out_fd is borrowed (e.g. STDOUT_FILENO) unless own_fd. */
int serial_create(struct vm *vm, int out_fd, bool own_fd,
		  struct serial **out);
void serial_destroy(struct serial *s);
/* system_reset: the guest-visible registers as at creation (all zero);
 * output already written stays. NULL is a no-op. */
void serial_reset(struct serial *s);
/* The UART's registers, for migration. */
int vm_serial_save(struct vm *vm, void **blob, size_t *len);
int vm_serial_load(struct vm *vm, const void *blob, size_t len,
		   char *err, size_t errlen);

#endif /* FERRY_VMM_SERIAL_H */
