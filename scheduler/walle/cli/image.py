"""`walle image`: the control side's image store (docs/images.md).

build, import, ls and rm work on the store folder only (--image-store, $WALLE_IMAGE_STORE or
/var/lib/walle/images-store); the scheduler reads the same folder when it places a job whose
runtime.image names NAME:VERSION or NAME@sha256:HEX. Bad input exits 2 and writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict

from walle.cli.common import print_json, progress
from walle.cli.main import EXIT_OK, EXIT_USAGE
from walle.cli.output import print_table
from walle.images import ImageError, ImageStore, store_root


def register(subparsers) -> None:
    image = subparsers.add_parser("image", help="build and manage versioned container images")
    sub = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, func):
        parser = sub.add_parser(name, help=help_text)
        parser.add_argument("--image-store", metavar="DIR",
                            help="the image store (default: $WALLE_IMAGE_STORE or "
                                 "/var/lib/walle/images-store)")
        parser.add_argument("--json", action="store_true", help="plain JSON on stdout")
        parser.set_defaults(func=func)
        return parser

    build = action("build", "pack a directory or a tar into the image NAME:VERSION", cmd_build)
    build.add_argument("ref", metavar="NAME:VERSION")
    build.add_argument("--from", dest="source", required=True, metavar="DIR|TAR",
                       help="a root tree, or a tar of one (any compression)")
    imp = action("import", "keep an image archive (gzip tar) as it is, as NAME:VERSION",
                 cmd_import)
    imp.add_argument("file", metavar="FILE")
    imp.add_argument("--name", required=True, metavar="NAME:VERSION")
    imp.add_argument("--digest", metavar="sha256:HEX",
                     help="refuse the file unless its sha256 is this")
    action("ls", "the images in the store", cmd_ls)
    rm = action("rm", "remove NAME:VERSION from the store", cmd_rm)
    rm.add_argument("ref", metavar="NAME:VERSION")


def _store(args) -> ImageStore:
    return ImageStore(store_root(args.image_store))


def _report(args, manifest, verb: str) -> int:
    if args.json:
        print_json(asdict(manifest))
    else:
        progress(f"walle image: {verb} {manifest.ref} ({manifest.size} bytes)")
        print(manifest.digest)
    return EXIT_OK


def _refused(err: ImageError) -> int:
    progress(f"walle image: {err}")
    return EXIT_USAGE


def cmd_build(args) -> int:
    try:
        return _report(args, _store(args).build(args.ref, args.source), "built")
    except ImageError as err:
        return _refused(err)


def cmd_import(args) -> int:
    try:
        manifest = _store(args).import_archive(args.file, args.name, args.digest)
    except ImageError as err:
        return _refused(err)
    return _report(args, manifest, "imported")


def cmd_ls(args) -> int:
    rows = [{**asdict(m), "image": m.ref} for m in _store(args).list()]
    if args.json:
        print_json(rows)
    else:
        print_table(rows, ("image", "digest", "size", "created"))
    return EXIT_OK


def cmd_rm(args) -> int:
    try:
        return _report(args, _store(args).remove(args.ref), "removed")
    except ImageError as err:
        return _refused(err)
