/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C glue for dm-migrate: static inline functions and macros of the block layer, kthreads and
 * completions that Rust cannot call directly. Each function only forwards or packs a few calls;
 * the Rust side (rust/) documents their use.
 */
#ifndef DM_MIGRATE_GLUE_H
#define DM_MIGRATE_GLUE_H

#include <linux/types.h>
#include <linux/blk_types.h>

struct bio;
struct bio_set;
struct block_device;
struct dm_target;
struct page;
struct task_struct;

/* What a bio does, for routing. */
enum migrate_bio_kind {
	MIGRATE_BIO_READ = 0,
	MIGRATE_BIO_WRITE = 1,	/* write, discard, write-zeroes, secure erase */
	MIGRATE_BIO_FLUSH = 2,	/* an empty flush */
};

void migrate_bio_set_dev(struct bio *bio, struct block_device *bdev);
unsigned int migrate_bio_sectors(const struct bio *bio);
sector_t migrate_bio_sector(const struct bio *bio);
void migrate_bio_set_sector(struct bio *bio, sector_t sector);
unsigned int migrate_bio_kind(const struct bio *bio);
bool migrate_bio_is_fua(const struct bio *bio);
/* A REQ_OP_WRITE with data (not a flush, discard or write-zeroes). */
bool migrate_bio_is_plain_write(const struct bio *bio);
u8 migrate_bio_status(const struct bio *bio);
void migrate_bio_set_status(struct bio *bio, u8 status);
void *migrate_bio_private(const struct bio *bio);
void migrate_submit_bio_noacct(struct bio *bio);

sector_t migrate_bdev_nr_sectors(struct block_device *bdev);
unsigned int migrate_bdev_logical_block_size(struct block_device *bdev);
dev_t migrate_bdev_dev(struct block_device *bdev);

/* A clone of @src on @bdev at @sector that calls @end_io(clone) with bi_private = @private. */
struct bio *migrate_clone_bio(struct bio *src, struct block_device *bdev, sector_t sector,
			      struct bio_set *bs, void (*end_io)(struct bio *), void *private);
void migrate_bio_put(struct bio *bio);

struct bio_set *migrate_bioset_create(unsigned int pool_size);
void migrate_bioset_destroy(struct bio_set *bs);
/* Waits until every bio taken from @bs has been put. Sleeps. */
void migrate_bioset_drain(struct bio_set *bs);

/*
 * Writes behind: a set whose bios carry an owner and a cookie; a copy of @src's data (a plain
 * write) for @bdev, or NULL when it cannot be made without waiting; its submission at @sector,
 * calling @end_io(bio); and its end, which puts the bio and frees its pages.
 */
struct bio_set *migrate_behind_set_create(unsigned int pool_size);
struct bio *migrate_behind_copy(struct bio *src, struct block_device *bdev, struct bio_set *bs);
void migrate_behind_submit(struct bio *bio, sector_t sector, void (*end_io)(struct bio *),
			   void *owner, unsigned int cookie);
void *migrate_behind_owner(struct bio *bio);
unsigned int migrate_behind_cookie(struct bio *bio);
void migrate_behind_free(struct bio *bio);

/* A FIFO of bios (struct bio_list) that the target holds back. */
struct bio_list;
struct bio_list *migrate_bio_list_create(void);
void migrate_bio_list_destroy(struct bio_list *list);
void migrate_bio_list_add(struct bio_list *list, struct bio *bio);
struct bio *migrate_bio_list_pop(struct bio_list *list);

/*
 * An event a thread sleeps on until it is signalled: a counter and a wait queue. Signalling is
 * allowed in any context (bio completions included).
 */
struct migrate_event;
struct migrate_event *migrate_event_create(void);
void migrate_event_destroy(struct migrate_event *event);
unsigned int migrate_event_count(struct migrate_event *event);
void migrate_event_signal(struct migrate_event *event);
/*
 * Sleeps until the event's count is no longer @seen, or @timeout_ms passed (0: no timeout), or,
 * with @stoppable, the calling kthread is asked to stop or park.
 */
void migrate_event_wait(struct migrate_event *event, unsigned int seen, unsigned int timeout_ms,
			bool stoppable);
/* Sleeps until @event is signalled after its count was @seen, uninterruptibly (for I/O). */
void migrate_event_wait_io(struct migrate_event *event, unsigned int seen);

/* What a copy I/O does. */
enum migrate_copy_op {
	MIGRATE_COPY_READ = 0,
	MIGRATE_COPY_WRITE = 1,
	MIGRATE_COPY_WRITE_ZEROES = 2,	/* no pages: the range reads as zeros afterwards */
};

/*
 * Copy I/O: bios submitted together and waited for together. The last completion signals
 * @event (if any), so that a thread driving several batches learns which are done without
 * waiting for each in turn.
 */
struct migrate_io_batch;
struct migrate_io_batch *migrate_io_batch_create(struct migrate_event *event);
void migrate_io_batch_destroy(struct migrate_io_batch *batch);
void migrate_io_batch_start(struct migrate_io_batch *batch);
int migrate_io_batch_add(struct migrate_io_batch *batch, struct block_device *bdev,
			 sector_t sector, struct page **pages, unsigned int bytes,
			 unsigned int op, struct bio_set *bs);
/* Drops the submitter's hold, after the last migrate_io_batch_add() of the I/O. */
void migrate_io_batch_submitted(struct migrate_io_batch *batch);
bool migrate_io_batch_done(struct migrate_io_batch *batch);
u8 migrate_io_batch_wait(struct migrate_io_batch *batch);
/* Whether the first @bytes of @pages are all zero bytes. */
bool migrate_pages_zero(struct page **pages, unsigned int bytes);
/* Whether @bdev takes REQ_OP_WRITE_ZEROES. */
bool migrate_bdev_write_zeroes(struct block_device *bdev);
int migrate_flush(struct block_device *bdev);
int migrate_page_io(struct block_device *bdev, sector_t sector, struct page *page,
		    unsigned int len, bool write, bool fua);

/* The copier thread. */
struct task_struct *migrate_kthread_create_parked(int (*fn)(void *), void *data, const char *name);
void migrate_kthread_park(struct task_struct *task);
void migrate_kthread_unpark(struct task_struct *task);
int migrate_kthread_stop(struct task_struct *task);
/* Sleeps at least @ms milliseconds. */
void migrate_msleep(unsigned int ms);
/* Whether @task is the calling task. */
bool migrate_task_is_current(struct task_struct *task);
/* Drops the reference migrate_kthread_create_parked() took, without stopping the thread. */
void migrate_task_put(struct task_struct *task);
/* Parks the calling thread first if that was asked, then says whether it should stop. */
bool migrate_kthread_should_stop(void);
/* Whether the calling kthread is asked to stop or park, without parking. */
bool migrate_kthread_stop_requested(void);
void migrate_cond_resched(void);
u64 migrate_now_ns(void);

/* A KOBJ_CHANGE uevent on the mapped device with DM_MIGRATE_STATE=@state. */
void migrate_uevent(struct dm_target *ti, const char *state);
void migrate_table_event(struct dm_target *ti);
/* The mapped device's name for log lines ("253:0"). */
const char *migrate_device_name(struct dm_target *ti);
/* An identity of the mapped device: its address. */
uintptr_t migrate_md_id(struct dm_target *ti);
/* Whether the target's table was loaded read-only. */
bool migrate_table_read_only(struct dm_target *ti);
/* An identity of the target's table: its address. */
uintptr_t migrate_table_id(struct dm_target *ti);
/* memalloc_noio_save/restore: allocations that cannot wait for I/O while a device is suspended. */
unsigned int migrate_noio_save(void);
void migrate_noio_restore(unsigned int flags);

/*
 * A sysfs folder of read-only files under the mapped device (/sys/block/dm-N/<name>/), whose
 * reads call @show(@owner, index of the file in @files, buf). Removed, with all readers
 * drained, by migrate_sysfs_destroy().
 */
struct migrate_sysfs;
struct migrate_sysfs *migrate_sysfs_create(struct dm_target *ti, const char *name,
					   const char *const *files, unsigned int nr_files,
					   long (*show)(void *owner, unsigned int file, char *buf),
					   void *owner);
void migrate_sysfs_destroy(struct migrate_sysfs *sysfs);

#endif /* DM_MIGRATE_GLUE_H */
