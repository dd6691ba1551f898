#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The fio migration of test_migrate_fio.sh with 1m regions.
REGION_SECTORS=2048 exec bash "$(dirname "$0")/test_migrate_fio.sh"
