// SPDX-License-Identifier: GPL-2.0
/*
 * C glue for dm-migrate; see glue.h.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>

#include "glue.h"

void migrate_bio_set_dev(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
}

unsigned int migrate_bio_sectors(const struct bio *bio)
{
	return bio_sectors(bio);
}

sector_t migrate_bio_sector(const struct bio *bio)
{
	return bio->bi_iter.bi_sector;
}

void migrate_bio_set_sector(struct bio *bio, sector_t sector)
{
	bio->bi_iter.bi_sector = sector;
}

sector_t migrate_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

unsigned int migrate_bdev_logical_block_size(struct block_device *bdev)
{
	return bdev_logical_block_size(bdev);
}

dev_t migrate_bdev_dev(struct block_device *bdev)
{
	return bdev->bd_dev;
}
