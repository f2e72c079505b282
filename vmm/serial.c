// SPDX-License-Identifier: BSD-3-Clause
/*
 * Minimal 8250 UART: enough for a polling console. Register numbers and
 * bits follow the National Semiconductor PC16550D datasheet.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "serial.h"
#include "vmm.h"

#define UART_NR_REGS	8
#define UART_RBR_THR	0	/* DLAB=1: divisor latch low */
#define UART_IER	1	/* DLAB=1: divisor latch high */
#define UART_IIR_FCR	2
#define UART_LCR	3
#define UART_MCR	4
#define UART_LSR	5
#define UART_MSR	6
#define UART_SCR	7

#define UART_LCR_DLAB	0x80
#define UART_IIR_NO_INT	0x01
#define UART_IIR_FIFO	0xc0	/* FIFOs enabled */
#define UART_FCR_ENABLE	0x01
#define UART_LSR_THRE	0x20
#define UART_LSR_TEMT	0x40
#define UART_MCR_LOOP	0x10
#define UART_MSR_DCD_DSR_CTS	0xb0

struct serial {
	pthread_mutex_t lock;
	int out_fd;
	bool own_fd;
	bool out_failed;
	uint8_t ier, lcr, mcr, scr, fcr;
	uint8_t dll, dlm;
};

static uint8_t serial_read(struct serial *s, unsigned reg)
{
	bool dlab = s->lcr & UART_LCR_DLAB;

	switch (reg) {
	case UART_RBR_THR:
		return dlab ? s->dll : 0;	/* never any input */
	case UART_IER:
		return dlab ? s->dlm : s->ier;
	case UART_IIR_FCR:
		return UART_IIR_NO_INT |
		       ((s->fcr & UART_FCR_ENABLE) ? UART_IIR_FIFO : 0);
	case UART_LCR:
		return s->lcr;
	case UART_MCR:
		return s->mcr;
	case UART_LSR:
		return UART_LSR_THRE | UART_LSR_TEMT;
	case UART_MSR:
		/* Carrier, data set ready, clear to send: a cable is there. */
		return (s->mcr & UART_MCR_LOOP) ? 0 : UART_MSR_DCD_DSR_CTS;
	default:
		return s->scr;
	}
}

static void serial_output(struct serial *s, uint8_t c)
{
	int ret;

	if (s->out_failed)
		return;
	ret = fd_write_full(s->out_fd, &c, 1);
	if (ret) {
		/* A closed console must not take the VM down. */
		s->out_failed = true;
		pr_warn("serial: output failed, console muted: %s",
			strerror(-ret));
	}
}

static void serial_write(struct serial *s, unsigned reg, uint8_t v)
{
	bool dlab = s->lcr & UART_LCR_DLAB;

	switch (reg) {
	case UART_RBR_THR:
		if (dlab)
			s->dll = v;
		else if (!(s->mcr & UART_MCR_LOOP))
			serial_output(s, v);
		break;
	case UART_IER:
		if (dlab)
			s->dlm = v;
		else
			s->ier = v & 0x0f;
		break;
	case UART_IIR_FCR:
		s->fcr = v;
		break;
	case UART_LCR:
		s->lcr = v;
		break;
	case UART_MCR:
		s->mcr = v & 0x1f;
		break;
	case UART_SCR:
		s->scr = v;
		break;
	default:	/* LSR, MSR: read-only */
		break;
	}
}

static void serial_io(void *opaque, uint64_t offset, void *data,
		      unsigned size, bool is_write)
{
	struct serial *s = opaque;
	uint8_t *b = data;

	/* Wider accesses touch consecutive registers, as on the ISA bus. */
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < size; i++) {
		unsigned reg = (unsigned)(offset + i);

		if (reg >= UART_NR_REGS) {
			if (!is_write)
				b[i] = 0xff;
			continue;
		}
		if (is_write)
			serial_write(s, reg, b[i]);
		else
			b[i] = serial_read(s, reg);
	}
	pthread_mutex_unlock(&s->lock);
}

int serial_create(struct vm *vm, int out_fd, bool own_fd,
		  struct serial **out)
{
	struct serial *s = calloc(1, sizeof(*s));
	int ret;

	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	s->out_fd = out_fd;
	s->own_fd = own_fd;
	ret = vm_register_pio(vm, SERIAL_COM1_BASE, UART_NR_REGS, serial_io, s);
	if (ret) {
		pthread_mutex_destroy(&s->lock);
		free(s);
		return ret;
	}
	*out = s;
	return 0;
}

void serial_reset(struct serial *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->ier = s->lcr = s->mcr = s->scr = s->fcr = 0;
	s->dll = s->dlm = 0;
	pthread_mutex_unlock(&s->lock);
}

/* Only after the vCPUs are gone: the PIO handler stays registered. */
void serial_destroy(struct serial *s)
{
	if (!s)
		return;
	if (s->own_fd)
		close_safely(&s->out_fd);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/* Migration: the guest-visible registers (the UART has no input and no
 * interrupts, so this is all of its state). */
struct serial_state {
	uint8_t ier, lcr, mcr, scr, fcr, dll, dlm, reserved;
};

int vm_serial_save(struct vm *vm, void **blob, size_t *len)
{
	struct serial *s = vm->serial;
	struct serial_state *st = calloc(1, sizeof(*st));

	if (!st)
		return -ENOMEM;
	if (s) {
		pthread_mutex_lock(&s->lock);
		*st = (struct serial_state){ s->ier, s->lcr, s->mcr, s->scr,
					     s->fcr, s->dll, s->dlm, 0 };
		pthread_mutex_unlock(&s->lock);
	}
	*blob = st;
	*len = sizeof(*st);
	return 0;
}

int vm_serial_load(struct vm *vm, const void *blob, size_t len,
		   char *err, size_t errlen)
{
	struct serial *s = vm->serial;
	struct serial_state st;

	if (len != sizeof(st)) {
		snprintf(err, errlen, "serial state is %zu bytes, want %zu",
			 len, sizeof(st));
		return -EBADMSG;
	}
	memcpy(&st, blob, sizeof(st));
	if (!s)
		return 0;
	pthread_mutex_lock(&s->lock);
	s->ier = st.ier & 0x0f;
	s->lcr = st.lcr;
	s->mcr = st.mcr & 0x1f;
	s->scr = st.scr;
	s->fcr = st.fcr;
	s->dll = st.dll;
	s->dlm = st.dlm;
	pthread_mutex_unlock(&s->lock);
	return 0;
}
