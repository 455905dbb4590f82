"""Nightly backup: a dated tar.gz of one folder, keeping the newest N archives."""
import datetime
import os
import pathlib
import tarfile

source = pathlib.Path(os.environ["BACKUP_SOURCE"])
target = pathlib.Path(os.environ["BACKUP_TARGET"])
keep = int(os.environ["BACKUP_KEEP"])
target.mkdir(parents=True, exist_ok=True)
stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
archive = target / f"{source.name or 'root'}-{stamp}.tar.gz"
with tarfile.open(archive, "w:gz") as tar:
    tar.add(source, arcname=source.name or "root")
print(f"backup: wrote {archive} ({archive.stat().st_size} bytes)")
for old in sorted(target.glob("*.tar.gz"))[:-keep]:
    old.unlink()
    print(f"backup: removed {old}")
