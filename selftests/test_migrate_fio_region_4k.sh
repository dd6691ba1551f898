#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The fio migration of test_migrate_fio.sh with 4k regions.
REGION_SECTORS=8 exec bash "$(dirname "$0")/test_migrate_fio.sh"
