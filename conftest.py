"""Make the repo importable as ``ansible_collections.kbxy.platform`` for pytest.

The repo root is the collection root; Ansible and Python find it through a
symlink at ``.collections/ansible_collections/kbxy/platform``.
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent
COLLECTIONS_DIR = ROOT / ".collections"
_LINK = COLLECTIONS_DIR / "ansible_collections" / "kbxy" / "platform"

if not _LINK.exists():
    _LINK.parent.mkdir(parents=True, exist_ok=True)
    _LINK.symlink_to(ROOT, target_is_directory=True)

if str(COLLECTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_DIR))
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(COLLECTIONS_DIR))
