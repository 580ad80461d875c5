#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: kbxy.platform developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT

from __future__ import (absolute_import, division, print_function)
__metaclass__ = type

DOCUMENTATION = r"""
---
module: sqlite_swap
short_description: Replace a live SQLite database with another without losing committed writes
version_added: 0.1.0
description:
  - Replaces the content of the live database O(dest) with the database O(src) (already on the target).
  - "Checks first, changes nothing when a check fails: O(src) must pass O(check); its schema (tables and columns)
    must match O(dest)'s unless O(allow_schema_change=true) (the difference is reported); when both hold the same
    content (schema, C(user_version), C(application_id) and every row) nothing is done and C(changed) is false."
  - Then backs O(dest) up with the verified backup of M(kbxy.platform.sqlite_backup) and replaces it with
    O(method).
  - V(online) copies O(src) into O(dest) with the SQLite backup API in one write transaction. Processes that
    have O(dest) open keep their connections and see the new content at their next transaction; writers wait
    (busy timeout) while the copy runs and their later writes land in the new content; the C(-wal)/C(-shm) files
    stay consistent because SQLite itself writes them.
  - V(rename) refuses, naming the PIDs, while any process has O(dest), its C(-wal), C(-shm) or C(-journal) open.
    Otherwise it copies O(src) next to O(dest), fsyncs it, folds the old C(-wal) into the old file, removes the
    stale C(-wal)/C(-shm)/C(-journal), renames the copy over O(dest), fsyncs the directory and keeps O(dest)'s
    owner, group and mode.
  - Afterwards O(dest) is checked with O(check); if that fails the backup is restored and the task fails.
  - When O(dest) does not exist yet, O(src) is installed there (copy, fsync, rename) and C(created) is true.
author:
  - kbxy.platform developers (@kbxy)
attributes:
  check_mode:
    support: full
    description: Runs every check (src integrity, schema comparison, content comparison, open-file check for
      V(rename)) and reports whether a swap would happen, without backing up or changing anything.
  diff_mode:
    support: full
    description: Shows C(user_version) and the schema (CREATE statements) of O(dest) before and after.
options:
  src:
    description:
      - Path of the new database on the target. It is only read.
    type: path
    required: true
  dest:
    description:
      - Path of the live database to replace.
    type: path
    required: true
  method:
    description:
      - V(online) copies inside one SQLite write transaction while applications keep running.
      - V(rename) replaces the file, only when no process has it open.
    type: str
    choices: [online, rename]
    default: online
  backup:
    description:
      - Back O(dest) up (verified) before replacing it, and restore from that backup if O(dest) is not ok afterwards.
    type: bool
    default: true
  backup_dir:
    description:
      - Directory for the backup of O(dest), named C(<dest base name>-preswap-<UTC timestamp>.db). Default is
        the directory of O(dest). These backups are never pruned by this module.
    type: path
  backup_compress:
    description:
      - Compression of the backup of O(dest). V(none) keeps the swap (and a restore) fast.
    type: str
    choices: [none, gzip]
    default: none
  check:
    description:
      - Check run on O(src) before and on O(dest) after the swap (and on the backup copy).
        V(full) is C(integrity_check), V(quick) is C(quick_check).
    type: str
    choices: [full, quick]
    default: full
  foreign_keys:
    description:
      - Also require C(PRAGMA foreign_key_check) to be clean on O(src) and on O(dest) afterwards.
    type: bool
    default: false
  allow_schema_change:
    description:
      - Swap even when the tables or columns of O(src) differ from O(dest)'s (for example a migration).
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for other connections' locks on O(dest) before giving up (nothing is changed then).
    type: float
    default: 30
notes:
  - With O(method=online) and a O(dest) in WAL mode, O(src) must have the same page size (the backup API cannot
    change the page size of a WAL database). The module checks this first and says how to fix it.
  - With O(method=online) the write lock on O(dest) is held for the duration of the copy (about 1 to 2.5 s per GiB
    on SSD); applications should use a busy timeout longer than that.
  - O(method=rename) must see every process's open files; run it as root (C(become=true)).
    Between the open-file check and the rename, a process could still open O(dest); stop the application first.
  - Content comparison reads both databases completely; on large databases it takes as long as a C(quick_check).
seealso:
  - module: kbxy.platform.sqlite_backup
  - module: kbxy.platform.sqlite_integrity
  - name: SQLite online backup API
    description: The mechanism of O(method=online).
    link: https://www.sqlite.org/backup.html
requirements:
  - Python 3.7 or later with the C(sqlite3) module on the target (standard library).
"""

EXAMPLES = r"""
- name: Upload the new database next to the live one
  ansible.builtin.copy:
    src: files/app.db
    dest: /srv/app/data/app.db.new
    owner: app
    group: app
    mode: '0640'

- name: Swap it in while the application keeps running
  kbxy.platform.sqlite_swap:
    src: /srv/app/data/app.db.new
    dest: /srv/app/data/app.db
    backup_dir: /var/backups/app
  register: swap

- name: Show the backup of the old content
  ansible.builtin.debug:
    msg: "old database saved as {{ swap.backup_file }}"
  when: swap.changed

- name: Apply a database with a migrated schema, application stopped, file replaced
  kbxy.platform.sqlite_swap:
    src: /srv/app/data/app-v2.db
    dest: /srv/app/data/app.db
    method: rename
    allow_schema_change: true
    check: quick
  become: true
"""

RETURN = r"""
changed:
  description: True when O(dest) was (or in check mode would be) replaced.
  returned: always
  type: bool
  sample: true
method:
  description: The method used.
  returned: always
  type: str
  sample: online
backup_file:
  description: Backup of O(dest) made before the swap; null when nothing was swapped or O(backup=false).
  returned: always
  type: str
  sample: /var/backups/app/app-preswap-20261123T031500Z.db
src_sha256:
  description: SHA-256 of the O(src) file.
  returned: always
  type: str
  sample: 9b74c9897bac770ffc029102a200c5de1f0b0b5b2d3a5c1e1f3e2d1c0b9a8f7e
elapsed_s:
  description: Seconds the module spent.
  returned: always
  type: float
  sample: 3.2
lock_held_s:
  description: Seconds the write lock on O(dest) was held by the online copy; null otherwise.
  returned: always
  type: float
  sample: 0.41
schema_diff:
  description: Tables and columns that differ between O(src) and O(dest); empty when they match.
  returned: always
  type: dict
  sample: {"tables_only_in_src": ["tarot_cards"], "columns": {"users": {"only_in_dest": ["email"]}}}
holders:
  description: With O(method=rename), the processes that hold O(dest), its C(-wal), C(-shm) or C(-journal) open
    (one entry per process and file) when the swap is refused.
  returned: when refused because the file is open
  type: list
  elements: dict
  contains:
    pid:
      description: Process ID.
      type: int
    cmdline:
      description: Command line of the process (first 200 characters).
      type: str
    path:
      description: The file it holds open.
      type: str
  sample: [{"pid": 4242, "cmdline": "/srv/app/venv/bin/python -m uvicorn app:app", "path": "/srv/app/data/app.db"}]
restored:
  description: When the check after the swap failed, whether O(dest) was restored from the backup.
  returned: when the check after the swap failed
  type: bool
  sample: true
created:
  description: True when O(dest) did not exist and O(src) was installed there.
  returned: always
  type: bool
  sample: false
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kbxy.platform.plugins.module_utils.sqlite_ops import (
    DatabaseCorrupt,
    FileInUse,
    SchemaMismatch,
    SqliteOpsError,
    SwapFailed,
    swap_database,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            src=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            method=dict(type="str", choices=["online", "rename"], default="online"),
            backup=dict(type="bool", default=True),
            backup_dir=dict(type="path"),
            backup_compress=dict(type="str", choices=["none", "gzip"], default="none"),
            check=dict(type="str", choices=["full", "quick"], default="full"),
            foreign_keys=dict(type="bool", default=False),
            allow_schema_change=dict(type="bool", default=False),
            lock_timeout=dict(type="float", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    common = dict(changed=False, method=p["method"], backup_file=None)
    try:
        result = swap_database(
            p["src"], p["dest"], method=p["method"], backup=p["backup"], backup_dir=p["backup_dir"], check=p["check"],
            foreign_keys=p["foreign_keys"], allow_schema_change=p["allow_schema_change"],
            backup_compress=p["backup_compress"], lock_timeout=p["lock_timeout"], check_mode=module.check_mode)
    except SchemaMismatch as e:
        module.fail_json(msg=e.msg, schema_diff=e.diff, **common)
    except FileInUse as e:
        module.fail_json(msg=e.msg, holders=e.holders, **common)
    except DatabaseCorrupt as e:
        module.fail_json(msg=e.msg, errors=e.result.get("errors", []), **common)
    except SwapFailed as e:
        failed = dict(common)
        failed.update(changed=True, backup_file=e.details.get("backup_file"), restored=e.details.get("restored"))
        module.fail_json(msg=e.msg, **failed)
    except SqliteOpsError as e:
        module.fail_json(msg=e.msg, **common)
    except (IOError, OSError) as e:
        module.fail_json(msg="swap of %s into %s failed: %s" % (p["src"], p["dest"], e), exception=traceback.format_exc(),
                         **common)
    diff = result.pop("diff")
    if module._diff and result["changed"]:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
