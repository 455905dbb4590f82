#!/usr/bin/python
# Copyright: Walle authors
# Simplified BSD License (see https://opensource.org/licenses/BSD-2-Clause)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: walle_image
short_description: Verify and unpack a Walle image into the node's image cache, or prune it
version_added: "0.1.0"
description:
  - V(present) makes C(<cache>/sha256-<hex>) hold the unpacked tree of the image O(digest).
    When it is missing, the fetched O(archive) is checked against O(digest) (sha256 of its
    bytes) and its members (no absolute paths, no C(..), no device files, no links out of the
    root), unpacked in a temporary directory and renamed into place, so the cache entry only
    exists complete. The archive is removed afterwards (and when its digest does not match,
    so the next placement fetches it again). Instances share the entry.
  - Each V(present) marks the entry as used now (its mtime), which O(keep_unused) counts from.
  - V(pruned) removes cache entries that no C(walle-*) unit file names and that were not used
    for O(keep_unused) seconds. Directories that are not C(sha256-<hex>) are never touched.
options:
  state:
    description: V(present) or V(pruned).
    type: str
    choices: [present, pruned]
    default: present
  digest:
    description: O(state=present) the image, V(sha256:<64 hex digits>).
    type: str
  archive:
    description:
      - O(state=present) the fetched archive on the node (a gzip tar); needed only when the
        cache does not hold the image yet.
    type: path
  cache:
    description: The node's image cache.
    type: path
    default: /var/lib/walle/images
  keep_unused:
    description: O(state=pruned) seconds an unreferenced image is kept after its last use.
    type: float
    default: 3600
attributes:
  check_mode:
    support: full
    description: Checks the digest, unpacks and removes nothing.
  diff_mode:
    support: full
    description: The cache entries added or removed.
  platform:
    support: full
    platforms: posix
    description: Runs on the node, not on the controller.
notes:
  - The archive's members are checked before anything is written; set-uid and set-gid bits are
    dropped. An absolute symlink target means the image's own root, as inside the container.
seealso:
  - module: walle.pool.walle_workload
author:
  - Walle authors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Image of the instance
  walle_image:
    digest: "sha256:0f1e..."
    archive: /var/lib/walle/images/.incoming/sha256-0f1e....tar.gz

- name: Drop images no unit uses
  walle_image:
    state: pruned
"""

RETURN = r"""
path:
  description: O(state=present) the unpacked image, for walle_workload's image.
  type: str
  returned: state=present
removed:
  description: O(state=pruned) the cache entries removed (or that would be, in check mode).
  type: list
  elements: str
  returned: state=pruned
"""

import os  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.walle.pool.plugins.module_utils import walle_systemd  # noqa: E402
from ansible_collections.walle.pool.plugins.module_utils.walle_image import (  # noqa: E402
    RUNTIME_UNIT_DIR,
    cache_dir_name,
    file_digest,
    unpack,
    unused_entries,
)
from ansible_collections.walle.pool.plugins.module_utils.walle_systemd import (  # noqa: E402
    WalleError,
)

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "pruned"], default="present"),
    digest=dict(type="str"),
    archive=dict(type="path"),
    cache=dict(type="path", default="/var/lib/walle/images"),
    keep_unused=dict(type="float", default=3600),
)


def ensure_present(module, params: dict) -> dict:
    digest = params["digest"]
    if not digest:
        raise WalleError("digest: required for state=present (sha256:<64 hex digits>)", "digest")
    try:
        entry = cache_dir_name(digest)
    except ValueError as exc:
        raise WalleError(f"digest: {exc}", "digest") from None
    path = os.path.join(params["cache"], entry)
    result = {"changed": False, "path": path}
    if os.path.isdir(path):
        if not module.check_mode:
            os.utime(path)  # used now: pruning counts from here
        return result
    archive = params["archive"]
    if not archive or not os.path.isfile(archive):
        raise WalleError(f"archive: the image {digest} is not in the cache {params['cache']} and "
                         f"no archive was fetched ({archive or 'none given'})", "archive")
    actual = file_digest(archive)
    if actual != digest:
        if not module.check_mode:
            os.remove(archive)  # the next placement fetches it again
        raise WalleError(f"digest: mismatch, the fetched archive has {actual} but the image is "
                         f"{digest}; nothing was unpacked and the archive was removed (check "
                         "the image store: `walle image ls`)", "digest", expected=digest,
                         actual=actual)
    result.update(changed=True, diff={"before": "", "after": f"{path}\n"})
    if module.check_mode:
        return result
    os.makedirs(params["cache"], mode=0o700, exist_ok=True)
    try:
        unpack(archive, path)
    except (ValueError, OSError, EOFError) as exc:
        raise WalleError(f"archive: {digest} cannot be unpacked: {exc}; nothing was unpacked",
                         "archive") from None
    os.remove(archive)
    return result


def prune(module, params: dict) -> dict:
    cache = params["cache"]
    unit_dirs = (walle_systemd.UNIT_DIR, RUNTIME_UNIT_DIR)  # where walle_workload writes
    removed = unused_entries(cache, params["keep_unused"], unit_dirs)
    if not module.check_mode:
        for entry in removed:
            shutil.rmtree(os.path.join(cache, entry))
    result = {"changed": bool(removed), "removed": removed}
    if removed:
        result["diff"] = {"before": "".join(f"{e}\n" for e in removed), "after": ""}
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    try:
        if params["keep_unused"] < 0:
            raise WalleError("keep_unused: must be 0 or more seconds", "keep_unused")
        run = ensure_present if params["state"] == "present" else prune
        result = run(module, params)
    except WalleError as exc:
        module.fail_json(msg=exc.msg, option=exc.option, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
