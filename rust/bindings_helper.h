/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C declarations bindgen turns into rust/bindings_generated.rs (see Kbuild).
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>

#include "glue.h"

/*
 * Block layer statuses are macros with a cast, which bindgen cannot evaluate; as in the kernel's
 * own rust/bindings/bindings_helper.h, constants initialised from them can be. Only bindgen
 * reads this header, so these definitions exist nowhere else.
 */
const blk_status_t MIGRATE_BLK_STS_OK = BLK_STS_OK;
const blk_status_t MIGRATE_BLK_STS_IOERR = BLK_STS_IOERR;
