/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C declarations bindgen turns into rust/bindings_generated.rs (see Kbuild).
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>

#include "glue.h"
