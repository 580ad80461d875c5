"""Offline stand-in for get-pip.py, the pip bootstrap script that ansible-test downloads
from a host this project's machines cannot reach. ansible-test runs it inside each fresh
sanity venv; it installs the pip that the interpreter bundles (ensurepip, no network),
then the packages ansible-test asked for from the package index.
"""
import ensurepip
import os
import subprocess
import sys

# ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the install below must
# see the machine's pip configuration (index, CA bundle) again.
pip_env = dict(os.environ)
ensurepip.bootstrap(upgrade=True)
# get-pip-only switches that plain `pip install` does not know
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args, env=pip_env))
