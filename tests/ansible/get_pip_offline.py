"""Stands in for pip's get-pip.py when ansible-test bootstraps its sanity virtualenvs.

ansible-test downloads get-pip.py from its own CI file host, which this project's machines do
not reach (only the package registries). This script takes the same arguments: pip comes from
the interpreter's own ensurepip, then pip installs the pinned packages ansible-test asked for
(pip itself first) from the package index as usual, with the machine's pip configuration.
test_ansible_sanity.py copies it to where ansible-test looks for a cached get-pip.py.
"""

import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")  # get-pip.py options pip install lacks

if __name__ == "__main__":
    # A child process: ensurepip points PIP_CONFIG_FILE at /dev/null in its own environment.
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True,
                   stdout=subprocess.DEVNULL)
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
