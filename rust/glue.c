// SPDX-License-Identifier: GPL-2.0
/*
 * C glue for dm-migrate; see glue.h.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/highmem.h>
#include <linux/wait.h>
#include <linux/device-mapper.h>
#include <linux/kobject.h>
#include <linux/kthread.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <linux/sysfs.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>

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

unsigned int migrate_bio_kind(const struct bio *bio)
{
	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return MIGRATE_BIO_READ;
	case REQ_OP_WRITE:
		/* dm splits a pre-flush off into its own empty bio. */
		return bio_sectors(bio) ? MIGRATE_BIO_WRITE : MIGRATE_BIO_FLUSH;
	case REQ_OP_FLUSH:
		return MIGRATE_BIO_FLUSH;
	default:
		/* Discard, write-zeroes, secure erase: they change data like a write. */
		return op_is_write(bio_op(bio)) ? MIGRATE_BIO_WRITE : MIGRATE_BIO_READ;
	}
}

bool migrate_bio_is_plain_write(const struct bio *bio)
{
	return bio_op(bio) == REQ_OP_WRITE && bio->bi_iter.bi_size;
}

bool migrate_bio_is_fua(const struct bio *bio)
{
	return bio->bi_opf & REQ_FUA;
}

u8 migrate_bio_status(const struct bio *bio)
{
	return bio->bi_status;
}

void migrate_bio_set_status(struct bio *bio, u8 status)
{
	bio->bi_status = status;
}

void *migrate_bio_private(const struct bio *bio)
{
	return bio->bi_private;
}

void migrate_submit_bio_noacct(struct bio *bio)
{
	submit_bio_noacct(bio);
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

/*
 * A bio set of the target's, which counts the bios taken from it that have not been put yet:
 * its owner may drop it while some are in flight (they borrow it only for the call that
 * submits them), and migrate_bioset_destroy() waits for them first.
 */
struct migrate_bio_set {
	struct bio_set bs;
	atomic_t outstanding;
};

static struct migrate_bio_set *migrate_bio_set_of(struct bio_set *bs)
{
	return container_of(bs, struct migrate_bio_set, bs);
}

/* Counts a bio just allocated from one of our sets. */
static void migrate_bioset_got(struct bio_set *bs)
{
	atomic_inc(&migrate_bio_set_of(bs)->outstanding);
}

/*
 * Puts a bio of one of our sets. The decrement is the last access to the set, after the bio
 * went back to its mempool: from then on migrate_bioset_destroy() may free it.
 */
static void migrate_bioset_put_bio(struct bio *bio)
{
	struct migrate_bio_set *set = migrate_bio_set_of(bio->bi_pool);

	bio_put(bio);
	atomic_dec_return_release(&set->outstanding);
}

struct bio *migrate_clone_bio(struct bio *src, struct block_device *bdev, sector_t sector,
			      struct bio_set *bs, void (*end_io)(struct bio *), void *private)
{
	/*
	 * GFP_NOIO from a bio_set's mempool waits rather than fails, but the clone of an
	 * integrity payload can fail: the caller then fails this half.
	 */
	struct bio *clone = bio_alloc_clone(bdev, src, GFP_NOIO, bs);

	if (!clone)
		return NULL;
	migrate_bioset_got(bs);
	/*
	 * The core polls only its own clone of a polled bio (dm_poll_dm_io), never these: they
	 * must complete by interrupt.
	 */
	clone->bi_opf &= ~REQ_POLLED;
	clone->bi_iter.bi_sector = sector;
	clone->bi_end_io = end_io;
	clone->bi_private = private;
	return clone;
}

void migrate_bio_put(struct bio *bio)
{
	migrate_bioset_put_bio(bio);
}

struct bio_set *migrate_bioset_create(unsigned int pool_size)
{
	struct migrate_bio_set *set = kzalloc(sizeof(*set), GFP_KERNEL);
	struct bio_set *bs = set ? &set->bs : NULL;

	/*
	 * map() clones from this set in submit_bio context, where the submitter's
	 * current->bio_list may still hold earlier clones from it: the rescuer punts those bios
	 * to a workqueue when the mempool runs dry, instead of waiting for them forever, as
	 * bio_alloc_bioset() asks of such a set.
	 */
	if (bs && bioset_init(bs, pool_size, 0, BIOSET_NEED_BVECS | BIOSET_NEED_RESCUER)) {
		kfree(set);
		bs = NULL;
	}
	return bs;
}

void migrate_bioset_destroy(struct bio_set *bs)
{
	struct migrate_bio_set *set;
	unsigned int waited_ms = 0;

	if (!bs)
		return;
	set = migrate_bio_set_of(bs);
	/*
	 * Polled, not woken: a waker would touch the set after its decrement, when this may
	 * already have freed it. The owner drops its set once the target's I/O is over, so this
	 * normally returns at once.
	 */
	while (atomic_read_acquire(&set->outstanding)) {
		if (waited_ms++ == 10000)
			pr_warn("dm-migrate: a bio set waits for bios still in flight\n");
		msleep(1);
	}
	bioset_exit(bs);
	kfree(set);
}

/*
 * Writes behind (the asynchronous mirror): a copy of a guest write's data in pages of its own,
 * for the destination, in a bio of a set whose front holds the owner and its cookie.
 */
struct migrate_behind {
	void *owner;
	unsigned int cookie;
	/* Last: the bio set's front pad ends where the bio begins. */
	struct bio bio;
};

struct bio_set *migrate_behind_set_create(unsigned int pool_size)
{
	struct migrate_bio_set *set = kzalloc(sizeof(*set), GFP_KERNEL);
	struct bio_set *bs = set ? &set->bs : NULL;

	/* Allocations from it never wait (GFP_NOWAIT): no rescuer is needed. */
	if (bs && bioset_init(bs, pool_size, offsetof(struct migrate_behind, bio),
			      BIOSET_NEED_BVECS)) {
		kfree(set);
		bs = NULL;
	}
	return bs;
}

void migrate_behind_free(struct bio *bio)
{
	bio_free_pages(bio);
	migrate_bioset_put_bio(bio);
}

struct bio *migrate_behind_copy(struct bio *src, struct block_device *bdev, struct bio_set *bs)
{
	unsigned int size = src->bi_iter.bi_size;
	unsigned int nr = DIV_ROUND_UP(size, PAGE_SIZE);
	unsigned int i;
	struct bio *bio;

	if (bio_op(src) != REQ_OP_WRITE || !size || nr > BIO_MAX_VECS)
		return NULL;
	/*
	 * Called from map() in the submitter's context: nothing here may wait for memory, since
	 * reclaim could write back through this very device. A copy that cannot be made now is
	 * mirrored synchronously instead.
	 */
	bio = bio_alloc_bioset(bdev, nr, REQ_OP_WRITE | (src->bi_opf & REQ_SYNC),
			       GFP_NOWAIT | __GFP_NOWARN, bs);
	if (!bio)
		return NULL;
	migrate_bioset_got(bs);
	for (i = 0; i < nr; i++) {
		unsigned int len = min_t(unsigned int, size - i * PAGE_SIZE, PAGE_SIZE);
		struct page *page = alloc_page(GFP_NOWAIT | __GFP_NOWARN);

		if (!page) {
			migrate_behind_free(bio);
			return NULL;
		}
		if (bio_add_page(bio, page, len, 0) != len) {
			__free_page(page);
			migrate_behind_free(bio);
			return NULL;
		}
	}
	bio_copy_data(bio, src);
	return bio;
}

void migrate_behind_submit(struct bio *bio, sector_t sector, void (*end_io)(struct bio *),
			   void *owner, unsigned int cookie)
{
	struct migrate_behind *behind = container_of(bio, struct migrate_behind, bio);

	behind->owner = owner;
	behind->cookie = cookie;
	bio->bi_iter.bi_sector = sector;
	bio->bi_end_io = end_io;
	submit_bio_noacct(bio);
}

void *migrate_behind_owner(struct bio *bio)
{
	return container_of(bio, struct migrate_behind, bio)->owner;
}

unsigned int migrate_behind_cookie(struct bio *bio)
{
	return container_of(bio, struct migrate_behind, bio)->cookie;
}

void migrate_bioset_drain(struct bio_set *bs)
{
	struct migrate_bio_set *set = migrate_bio_set_of(bs);

	unsigned int waited_ms = 0;

	/* Polled, not woken, for the reason migrate_bioset_destroy() gives. */
	while (atomic_read_acquire(&set->outstanding)) {
		if (waited_ms++ == 10000)
			pr_warn("dm-migrate: a suspend waits for writes behind still in flight to the destination\n");
		msleep(1);
	}
}

struct bio_list *migrate_bio_list_create(void)
{
	struct bio_list *list = kmalloc(sizeof(*list), GFP_KERNEL);

	if (list)
		bio_list_init(list);
	return list;
}

void migrate_bio_list_destroy(struct bio_list *list)
{
	kfree(list);
}

void migrate_bio_list_add(struct bio_list *list, struct bio *bio)
{
	bio_list_add(list, bio);
}

struct bio *migrate_bio_list_pop(struct bio_list *list)
{
	return bio_list_pop(list);
}

struct migrate_event {
	atomic_t count;
	wait_queue_head_t wait;
};

struct migrate_event *migrate_event_create(void)
{
	struct migrate_event *event = kzalloc(sizeof(*event), GFP_KERNEL);

	if (event)
		init_waitqueue_head(&event->wait);
	return event;
}

void migrate_event_destroy(struct migrate_event *event)
{
	kfree(event);
}

unsigned int migrate_event_count(struct migrate_event *event)
{
	return atomic_read_acquire(&event->count);
}

void migrate_event_signal(struct migrate_event *event)
{
	/*
	 * The count changes before the wake-up: a sleeper that checked the count before this is on
	 * the queue (wait_event adds it before checking) and is woken; one that checks after sees
	 * the new count and does not sleep. wake_up() takes the queue's lock with interrupts off,
	 * so this is fine in any context.
	 */
	atomic_inc_return_release(&event->count);
	wake_up_all(&event->wait);
}

void migrate_event_wait(struct migrate_event *event, unsigned int seen, unsigned int timeout_ms,
			bool stoppable)
{
	long timeout = timeout_ms ? msecs_to_jiffies(timeout_ms) : MAX_SCHEDULE_TIMEOUT;

	/*
	 * Interruptible like the kthread's other sleeps (a kthread takes no signals, and an
	 * uninterruptible sleep would count as load and trip the hung-task detector); a stop or
	 * park request wakes the thread with wake_up_process(), which ends this sleep too.
	 */
	wait_event_interruptible_timeout(event->wait,
		atomic_read_acquire(&event->count) != seen ||
		(stoppable && (kthread_should_stop() || kthread_should_park())),
		timeout);
}

void migrate_event_wait_io(struct migrate_event *event, unsigned int seen)
{
	/*
	 * A bio's submitter waiting for another bio to land: uninterruptible, as any wait for
	 * I/O (an interruptible one would spin while the submitter has a signal pending).
	 */
	wait_event(event->wait, atomic_read_acquire(&event->count) != seen);
}

struct migrate_io_batch {
	/* Bios in flight, plus one held by the submitter until it has submitted them all. */
	atomic_t pending;
	blk_status_t status;
	struct completion done;
	struct migrate_event *event;
};

struct migrate_io_batch *migrate_io_batch_create(struct migrate_event *event)
{
	struct migrate_io_batch *batch = kzalloc(sizeof(struct migrate_io_batch), GFP_KERNEL);

	if (batch) {
		batch->event = event;
		init_completion(&batch->done);
	}
	return batch;
}

void migrate_io_batch_destroy(struct migrate_io_batch *batch)
{
	kfree(batch);
}

void migrate_io_batch_start(struct migrate_io_batch *batch)
{
	atomic_set(&batch->pending, 1);
	batch->status = BLK_STS_OK;
	reinit_completion(&batch->done);
}

/*
 * The batch is over: its count reaches 0 (what migrate_io_batch_done() tests), then the event
 * is signalled, then the completion, which is the last the completer touches. The batch may be
 * freed or reused only after migrate_io_batch_wait(), whose wait_for_completion() returns once
 * complete() has let go of it; the event outlives every batch that signals it (each holds a
 * reference until then).
 */
static void migrate_io_batch_put(struct migrate_io_batch *batch)
{
	if (atomic_dec_and_test(&batch->pending)) {
		if (batch->event)
			migrate_event_signal(batch->event);
		complete(&batch->done);
	}
}

void migrate_io_batch_submitted(struct migrate_io_batch *batch)
{
	migrate_io_batch_put(batch);
}

static void migrate_io_batch_endio(struct bio *bio)
{
	struct migrate_io_batch *batch = bio->bi_private;

	if (bio->bi_status)
		WRITE_ONCE(batch->status, bio->bi_status);
	migrate_bioset_put_bio(bio);
	migrate_io_batch_put(batch);
}

bool migrate_io_batch_done(struct migrate_io_batch *batch)
{
	/*
	 * The count, not the completion: it reaches 0 before the event is signalled, so a thread
	 * that read the event's count before this check cannot miss the end (it would, polling
	 * the completion, in the window between the signal and complete()). The caller then waits
	 * with migrate_io_batch_wait(), which returns once complete() has let go of the batch.
	 */
	return atomic_read_acquire(&batch->pending) == 0;
}

bool migrate_pages_zero(struct page **pages, unsigned int bytes)
{
	while (bytes) {
		unsigned int len = min_t(unsigned int, bytes, PAGE_SIZE);
		void *addr = kmap_local_page(*pages);
		bool zero = !memchr_inv(addr, 0, len);

		kunmap_local(addr);
		if (!zero)
			return false;
		bytes -= len;
		pages++;
	}
	return true;
}

bool migrate_bdev_write_zeroes(struct block_device *bdev)
{
	return bdev_write_zeroes_sectors(bdev) != 0;
}

static int migrate_io_batch_zeroes(struct migrate_io_batch *batch, struct block_device *bdev,
				   sector_t sector, unsigned int bytes, struct bio_set *bs)
{
	/* One bio without pages; the block layer splits it to the device's limit. */
	struct bio *bio = bio_alloc_bioset(bdev, 0, REQ_OP_WRITE_ZEROES, GFP_NOIO, bs);

	if (!bio)
		return -ENOMEM;
	migrate_bioset_got(bs);
	bio->bi_iter.bi_sector = sector;
	bio->bi_iter.bi_size = bytes;
	bio->bi_private = batch;
	bio->bi_end_io = migrate_io_batch_endio;
	atomic_inc(&batch->pending);
	submit_bio(bio);
	return 0;
}

int migrate_io_batch_add(struct migrate_io_batch *batch, struct block_device *bdev,
			 sector_t sector, struct page **pages, unsigned int bytes,
			 unsigned int op, struct bio_set *bs)
{
	bool write = op == MIGRATE_COPY_WRITE;

	if (op == MIGRATE_COPY_WRITE_ZEROES)
		return migrate_io_batch_zeroes(batch, bdev, sector, bytes, bs);
	/*
	 * A bio holds at most BIO_MAX_VECS pages (1 MiB): a larger buffer goes out as several
	 * bios. Those already submitted when an allocation fails are still counted in the batch,
	 * so the caller's wait covers them.
	 */
	while (bytes) {
		unsigned int nr_pages = min_t(unsigned int, DIV_ROUND_UP(bytes, PAGE_SIZE), BIO_MAX_VECS);
		unsigned int chunk = min_t(unsigned int, bytes, nr_pages * PAGE_SIZE);
		struct bio *bio;
		unsigned int i;

		bio = bio_alloc_bioset(bdev, nr_pages, write ? REQ_OP_WRITE : REQ_OP_READ, GFP_NOIO, bs);
		if (!bio)
			return -ENOMEM;
		migrate_bioset_got(bs);
		bio->bi_iter.bi_sector = sector;
		for (i = 0; i < nr_pages; i++) {
			unsigned int len = min_t(unsigned int, chunk - i * PAGE_SIZE, PAGE_SIZE);

			if (bio_add_page(bio, pages[i], len, 0) != len) {
				migrate_bioset_put_bio(bio);
				return -EIO;
			}
		}
		bio->bi_private = batch;
		bio->bi_end_io = migrate_io_batch_endio;
		atomic_inc(&batch->pending);
		submit_bio(bio);
		sector += chunk >> SECTOR_SHIFT;
		pages += nr_pages;
		bytes -= chunk;
	}
	return 0;
}

u8 migrate_io_batch_wait(struct migrate_io_batch *batch)
{
	wait_for_completion_io(&batch->done);
	return READ_ONCE(batch->status);
}

int migrate_flush(struct block_device *bdev)
{
	return blkdev_issue_flush(bdev);
}

/*
 * One synchronous read or write of the start of a page: the metadata device's I/O. The bio
 * lives on the stack (no allocation, so it is safe also while the mapped device is
 * suspended); a FUA write is durable when this returns.
 */
int migrate_page_io(struct block_device *bdev, sector_t sector, struct page *page,
		    unsigned int len, bool write, bool fua)
{
	blk_opf_t opf = write ? REQ_OP_WRITE | REQ_SYNC : REQ_OP_READ;
	struct bio_vec bvec;
	struct bio bio;
	int ret;

	if (write && fua)
		opf |= REQ_FUA;
	bio_init(&bio, bdev, &bvec, 1, opf);
	bio.bi_iter.bi_sector = sector;
	__bio_add_page(&bio, page, len, 0);
	ret = submit_bio_wait(&bio);
	bio_uninit(&bio);
	return ret;
}

struct task_struct *migrate_kthread_create_parked(int (*fn)(void *), void *data, const char *name)
{
	struct task_struct *task = kthread_create(fn, data, "dm-migrate/%s", name);

	if (IS_ERR(task))
		return NULL;
	/* Held until migrate_kthread_stop(), so that stopping is safe even if fn returned. */
	get_task_struct(task);
	/* The thread parks before it first calls fn, until migrate_kthread_unpark(). */
	kthread_park(task);
	return task;
}

void migrate_kthread_park(struct task_struct *task)
{
	kthread_park(task);
}

void migrate_kthread_unpark(struct task_struct *task)
{
	kthread_unpark(task);
}

int migrate_kthread_stop(struct task_struct *task)
{
	return kthread_stop_put(task);
}

void migrate_msleep(unsigned int ms)
{
	msleep(ms);
}

bool migrate_task_is_current(struct task_struct *task)
{
	return task == current;
}

void migrate_task_put(struct task_struct *task)
{
	put_task_struct(task);
}

bool migrate_kthread_should_stop(void)
{
	/*
	 * It may park, which sleeps: called under a spinlock or in atomic context, it is a bug
	 * that the debug kernel reports here whether or not a park was asked for.
	 */
	might_sleep();
	/* A park request parks the thread here, between two units of its work. */
	if (kthread_should_park())
		kthread_parkme();
	return kthread_should_stop();
}

bool migrate_kthread_stop_requested(void)
{
	return kthread_should_stop() || kthread_should_park();
}

void migrate_cond_resched(void)
{
	cond_resched();
}

u64 migrate_now_ns(void)
{
	return ktime_get_ns();
}

void migrate_uevent(struct dm_target *ti, const char *state)
{
	struct mapped_device *md = dm_table_get_md(ti->table);
	char state_env[64];
	char *envp[] = { state_env, NULL };

	unsigned int noio;

	snprintf(state_env, sizeof(state_env), "DM_MIGRATE_STATE=%s", state);
	/* The device may be suspended (a message): no allocation may wait for its I/O. */
	noio = memalloc_noio_save();
	kobject_uevent_env(&disk_to_dev(dm_disk(md))->kobj, KOBJ_CHANGE, envp);
	memalloc_noio_restore(noio);
}

uintptr_t migrate_md_id(struct dm_target *ti)
{
	return (uintptr_t)dm_table_get_md(ti->table);
}

bool migrate_table_read_only(struct dm_target *ti)
{
	return !(dm_table_get_mode(ti->table) & BLK_OPEN_WRITE);
}

uintptr_t migrate_table_id(struct dm_target *ti)
{
	return (uintptr_t)ti->table;
}

unsigned int migrate_noio_save(void)
{
	return memalloc_noio_save();
}

void migrate_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}

const char *migrate_device_name(struct dm_target *ti)
{
	return dm_device_name(dm_table_get_md(ti->table));
}

void migrate_table_event(struct dm_target *ti)
{
	dm_table_event(ti->table);
}

#define MIGRATE_SYSFS_MAX_FILES 16

struct migrate_sysfs {
	struct kobject kobj;
	struct kobj_attribute attrs[MIGRATE_SYSFS_MAX_FILES];
	struct attribute *attr_ptrs[MIGRATE_SYSFS_MAX_FILES + 1];
	struct attribute_group group;
	long (*show)(void *owner, unsigned int file, char *buf);
	void *owner;
};

static ssize_t migrate_sysfs_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct migrate_sysfs *sysfs = container_of(kobj, struct migrate_sysfs, kobj);

	return sysfs->show(sysfs->owner, attr - sysfs->attrs, buf);
}

static void migrate_sysfs_release(struct kobject *kobj)
{
	kfree(container_of(kobj, struct migrate_sysfs, kobj));
}

static const struct kobj_type migrate_sysfs_ktype = {
	.release = migrate_sysfs_release,
	.sysfs_ops = &kobj_sysfs_ops,
};

struct migrate_sysfs *migrate_sysfs_create(struct dm_target *ti, const char *name,
					   const char *const *files, unsigned int nr_files,
					   long (*show)(void *owner, unsigned int file, char *buf),
					   void *owner)
{
	struct mapped_device *md = dm_table_get_md(ti->table);
	struct migrate_sysfs *sysfs;
	unsigned int i;

	if (nr_files > MIGRATE_SYSFS_MAX_FILES)
		return NULL;
	sysfs = kzalloc(sizeof(*sysfs), GFP_KERNEL);
	if (!sysfs)
		return NULL;
	sysfs->show = show;
	sysfs->owner = owner;
	for (i = 0; i < nr_files; i++) {
		sysfs_attr_init(&sysfs->attrs[i].attr);
		sysfs->attrs[i].attr.name = files[i];
		sysfs->attrs[i].attr.mode = 0444;
		sysfs->attrs[i].show = migrate_sysfs_show;
		sysfs->attr_ptrs[i] = &sysfs->attrs[i].attr;
	}
	sysfs->group.attrs = sysfs->attr_ptrs;
	if (kobject_init_and_add(&sysfs->kobj, &migrate_sysfs_ktype,
				 &disk_to_dev(dm_disk(md))->kobj, "%s", name)) {
		kobject_put(&sysfs->kobj);
		return NULL;
	}
	if (sysfs_create_group(&sysfs->kobj, &sysfs->group)) {
		kobject_del(&sysfs->kobj);
		kobject_put(&sysfs->kobj);
		return NULL;
	}
	return sysfs;
}

void migrate_sysfs_destroy(struct migrate_sysfs *sysfs)
{
	/* Removing the files waits for readers in show() to leave. */
	sysfs_remove_group(&sysfs->kobj, &sysfs->group);
	kobject_del(&sysfs->kobj);
	kobject_put(&sysfs->kobj);
}
