/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The connections at a listener's door that have not said hello yet
 * (mig_accept.c), kept with the listener between calls of
 * mig_accept_source(): when the main channel's hello wins, the others
 * waiting may be that source's multifd channels, still to say theirs.
 * Library-private.
 */
#ifndef FERRY_LIB_MIG_DOOR_H
#define FERRY_LIB_MIG_DOOR_H

struct mig_door;
struct mig_listener;

/* The listener's door, made on first use; NULL if out of memory. */
struct mig_door *mig_listener_door(struct mig_listener *l);
struct mig_door *mig_door_new(void);
/* Refuse (log why, close) whoever still waits; free (d may be NULL). */
void mig_door_refuse(struct mig_door *d, const char *why);
void mig_door_free(struct mig_door *d);

#endif /* FERRY_LIB_MIG_DOOR_H */
