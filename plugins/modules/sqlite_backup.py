#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kbxy.platform developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r"""
---
module: sqlite_backup
short_description: Make a verified online backup of a live SQLite database and rotate old ones
version_added: 0.1.0
description:
  - Copies a live SQLite database with the online backup API in one step while the application keeps
    writing, checks the copy with C(PRAGMA integrity_check) before it is published, and publishes it
    atomically as C(<prefix>-<UTC timestamp>.db) or C(<prefix>-<UTC timestamp>.db.gz) in O(dest_dir),
    with a JSON manifest beside it (C(<backup>.json)) holding sha256, size, source, page_count,
    user_version and created.
  - "Publishing order: the copy goes to a hidden temp file in O(dest_dir); it is verified, optionally
    compressed (the gzip stream is decompressed again and compared), fsynced, renamed to its final name and
    the directory is fsynced. A backup killed at any point leaves no file under a final name; its temp
    files are removed by the next run for the same prefix."
  - Then prunes older backups of the same prefix by the rules of restic's C(forget --keep-*), never the backup
    just made.
  - In WAL mode the copy does not block writers. In rollback-journal mode writers wait while the copy is made.
author:
  - kbxy.platform developers (@kbxy)
attributes:
  check_mode:
    support: full
    description: Opens the source read-only to make sure it is a database, creates nothing, and returns the name
      the backup would get and which backups would be kept and pruned.
  diff_mode:
    support: none
    description: A new backup file is created on every run; there is no before/after to show.
options:
  src:
    description:
      - Path of the live SQLite database on the target.
    type: path
    required: true
  dest_dir:
    description:
      - Directory for the backups. Created (mode 0700) when missing.
      - Preferably on another disk than O(src).
    type: path
    required: true
  prefix:
    description:
      - Backup names start with this, followed by C(-) and the UTC time C(YYYYMMDDTHHMMSSZ).
      - Retention only considers files of this prefix.
      - Defaults to the base name of O(src) without its C(.db)/C(.sqlite)/C(.sqlite3) extension.
    type: str
  compress:
    description:
      - V(gzip) writes C(.db.gz) files, V(none) plain C(.db) files.
    type: str
    choices: [none, gzip]
    default: gzip
  compress_level:
    description:
      - gzip compression level, 1 (fastest) to 9 (smallest).
    type: int
    default: 6
  verify:
    description:
      - Check the copy with O(check) before publishing it, and decompress the gzip stream again to compare it.
      - With V(false) only a C(quick_check) of the copy is run.
    type: bool
    default: true
  check:
    description:
      - V(full) runs C(integrity_check) on the copy, V(quick) runs C(quick_check) (much faster on large databases).
    type: str
    choices: [full, quick]
    default: full
  keep:
    description:
      - Retention, as restic's C(forget --keep-*). For each rule, walking backups from newest to oldest, the newest
        backup of each of the last N periods (hours, days, ISO weeks, months, years, in UTC) that contain a backup is
        kept; C(last) keeps the N newest. A rule that still has a count left when it reaches the oldest backup keeps
        that one too. The rules are ORed. A value of V(-1) means unlimited, V(0) turns a rule off.
      - With no rule set nothing is pruned.
    type: dict
    default: {}
    suboptions:
      last:
        description: Keep the N newest backups.
        type: int
      hourly:
        description: Keep the newest backup of each of the last N hours that have one.
        type: int
      daily:
        description: Keep the newest backup of each of the last N days that have one.
        type: int
      weekly:
        description: Keep the newest backup of each of the last N ISO weeks (Monday to Sunday) that have one.
        type: int
      monthly:
        description: Keep the newest backup of each of the last N months that have one.
        type: int
      yearly:
        description: Keep the newest backup of each of the last N years that have one.
        type: int
  owner:
    description:
      - Owner (name or uid) of the backup and its manifest. Default is the user running the module.
    type: str
  group:
    description:
      - Group (name or gid) of the backup and its manifest.
    type: str
  mode:
    description:
      - Octal permissions of the backup and its manifest, as a string such as V('0640').
    type: raw
    default: '0600'
  lock_timeout:
    description:
      - Seconds to wait for a lock held by another connection (rollback-journal databases) before failing.
    type: float
    default: 30
notes:
  - The copy is made in one step (C(backup(pages=-1))). A step-wise copy restarts each time another connection
    writes and may never finish under a steady writer.
  - Backup files are single self-contained files in rollback-journal mode; the manifest records the source's
    journal mode. An application that uses WAL switches back when it sets C(journal_mode=WAL), and
    M(kbxy.platform.sqlite_swap) with O(kbxy.platform.sqlite_swap#module:method=online) keeps the live
    database's journal mode.
  - Concurrent runs for the same O(dest_dir) and O(prefix) are serialised with a lock file C(.<prefix>.lock).
seealso:
  - module: kbxy.platform.sqlite_integrity
  - module: kbxy.platform.sqlite_swap
  - name: restic forget --keep-* policies
    description: The retention rules this module follows.
    link: https://restic.readthedocs.io/en/stable/060_forget.html#removing-snapshots-according-to-a-policy
  - name: SQLite online backup API
    description: How the copy is made.
    link: https://www.sqlite.org/backup.html
requirements:
  - Python 3.7 or later with the C(sqlite3) module on the target (standard library).
"""

EXAMPLES = r"""
- name: Back up the application database, keep 7 daily, 4 weekly and 6 monthly backups
  kbxy.platform.sqlite_backup:
    src: /srv/app/data/app.db
    dest_dir: /var/backups/app
    keep:
      last: 3
      daily: 7
      weekly: 4
      monthly: 6
  register: backup

- name: Show what was written
  ansible.builtin.debug:
    msg: "{{ backup.backup_file }} ({{ backup.size_bytes }} bytes, sha256 {{ backup.sha256 }})"

- name: Uncompressed backup with a quick check, readable by the backup group
  kbxy.platform.sqlite_backup:
    src: /srv/app/data/app.db
    dest_dir: /var/backups/app
    prefix: app-predeploy
    compress: none
    check: quick
    owner: root
    group: backup
    mode: '0640'

- name: See which backups the policy would prune, without making one
  kbxy.platform.sqlite_backup:
    src: /srv/app/data/app.db
    dest_dir: /var/backups/app
    keep:
      daily: 3
  check_mode: true
  register: plan
"""

RETURN = r"""
backup_file:
  description: Path of the new backup (in check mode, the path it would have).
  returned: always
  type: str
  sample: /var/backups/app/app-20261123T031500Z.db.gz
manifest_file:
  description: Path of the JSON manifest beside the backup.
  returned: always
  type: str
  sample: /var/backups/app/app-20261123T031500Z.db.gz.json
sha256:
  description: SHA-256 of the backup file as written (of the C(.gz) file when compressed). Null in check mode.
  returned: always
  type: str
  sample: 3f1c0d5c2c9c4b0d2a6a1f2c8b8e7e1b4c3d2a1f0e9d8c7b6a5f4e3d2c1b0a99
size_bytes:
  description: Size of the backup file in bytes. Null in check mode.
  returned: always
  type: int
  sample: 1048576
page_count:
  description: Pages in the copied database.
  returned: success and not check mode
  type: int
  sample: 2048
user_version:
  description: C(PRAGMA user_version) of the copied database.
  returned: success and not check mode
  type: int
  sample: 12
created:
  description: UTC time of the backup (ISO 8601), as in the manifest.
  returned: success and not check mode
  type: str
  sample: "2026-11-23T03:15:00.123456Z"
kept:
  description: Backups of this prefix that are kept (newest first), the new one included.
  returned: always
  type: list
  elements: str
  sample: [/var/backups/app/app-20261123T031500Z.db.gz, /var/backups/app/app-20261122T031500Z.db.gz]
pruned:
  description: Backups deleted by the retention rules (in check mode, those that would be), with their manifests.
  returned: always
  type: list
  elements: str
  sample: [/var/backups/app/app-20261015T031500Z.db.gz]
stale_removed:
  description: Temp files of killed earlier runs that were removed.
  returned: always
  type: list
  elements: str
  sample: []
elapsed_s:
  description: Seconds the module spent.
  returned: always
  type: float
  sample: 2.31
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kbxy.platform.plugins.module_utils.sqlite_ops import (
    RETENTION_RULES,
    SqliteOpsError,
    backup_database,
)


def main():
    keep_spec = dict((r, dict(type="int")) for r in RETENTION_RULES)
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest_dir=dict(type="path", required=True),
            prefix=dict(type="str"),
            compress=dict(type="str", choices=["none", "gzip"], default="gzip"),
            compress_level=dict(type="int", default=6),
            verify=dict(type="bool", default=True),
            check=dict(type="str", choices=["full", "quick"], default="full"),
            keep=dict(type="dict", default={}, options=keep_spec),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="raw", default="0600"),
            lock_timeout=dict(type="float", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if not 1 <= p["compress_level"] <= 9:
        module.fail_json(msg="compress_level must be between 1 and 9, got %d" % p["compress_level"])
    keep = dict((k, v) for k, v in (p["keep"] or {}).items() if v is not None)
    try:
        result = backup_database(
            p["src"], p["dest_dir"], prefix=p["prefix"], compress=p["compress"], compress_level=p["compress_level"],
            verify=p["verify"], check=p["check"], keep=keep, owner=p["owner"], group=p["group"], mode=p["mode"],
            lock_timeout=p["lock_timeout"], check_mode=module.check_mode)
    except SqliteOpsError as e:
        module.fail_json(msg=e.msg, changed=False)
    except (IOError, OSError) as e:
        module.fail_json(msg="backup of %s into %s failed: %s" % (p["src"], p["dest_dir"], e), changed=False,
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
