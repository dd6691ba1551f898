/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C glue for dm-migrate: static inline functions and macros of the block layer that Rust cannot
 * call directly. Each one only forwards; the Rust side (rust/glue.rs) documents their use.
 */
#ifndef DM_MIGRATE_GLUE_H
#define DM_MIGRATE_GLUE_H

#include <linux/types.h>

struct bio;
struct block_device;

void migrate_bio_set_dev(struct bio *bio, struct block_device *bdev);
unsigned int migrate_bio_sectors(const struct bio *bio);
sector_t migrate_bio_sector(const struct bio *bio);
void migrate_bio_set_sector(struct bio *bio, sector_t sector);
sector_t migrate_bdev_nr_sectors(struct block_device *bdev);
unsigned int migrate_bdev_logical_block_size(struct block_device *bdev);
dev_t migrate_bdev_dev(struct block_device *bdev);

#endif /* DM_MIGRATE_GLUE_H */
