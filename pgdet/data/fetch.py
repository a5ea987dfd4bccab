"""``pgdet-fetch-data``: download a dataset pgdet's configs use, check it, and put it in the data
root, where configs naming ``$PGDET_DATA/<dataset>/...`` find it (pgdet/data/data_root.py).

    pgdet-fetch-data bccd                  # into $PGDET_DATA, else ~/.cache/pgdet/data
    pgdet-fetch-data asl --cache DIR       # into DIR (then export PGDET_DATA=DIR)
    pgdet-fetch-data bccd --url file:///path/to/archive.tar.gz   # an archive downloaded by hand

Each dataset is a GitHub archive of a fixed commit (docs/datasets.md). GitHub builds these
archives on request, so their bytes (and a checksum of them) are not guaranteed to stay fixed:
what is checked is the content, the numbers of images and boxes per split, before anything is
moved into place. A dataset already in place and complete is not fetched again.
"""
import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

from .data_root import ENV, PREFIX, fetch_root, resolve_data_path
from .fetch_asl import FOLDER as ASL_FOLDER
from .fetch_asl import install_asl, verify_asl
from .fetch_bccd import install_bccd, verify_bccd

CHUNK = 1 << 20  # bytes read at a time; progress is printed every 10 % or every 8 MB


class FetchError(RuntimeError):
    """A download or a check that failed; the message is one line naming the URL or file."""


class Source(NamedTuple):
    """A fetchable dataset: its archive and how to install it from the unpacked archive."""
    url: str
    top: str  # the archive's top folder
    parts: Tuple[str, ...]  # what is unpacked: files or folders below `top`
    install: Callable[[str, str], None]  # (unpacked archive's top folder, dataset folder)
    verify: Callable[[str], Optional[str]]  # dataset folder → what is wrong, or None


BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"
ASL_COMMIT = "f467abc4475a17a5652f240a7ec878d8267efb19"
SOURCES: Dict[str, Source] = {
    "bccd": Source(f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.tar.gz",
                   f"BCCD_Dataset-{BCCD_COMMIT}", ("BCCD", "LICENSE"), install_bccd, verify_bccd),
    "asl": Source("https://github.com/dnth/yolov5-deepsparse-blogpost/archive/"
                  f"{ASL_COMMIT}.tar.gz", f"yolov5-deepsparse-blogpost-{ASL_COMMIT}",
                  (ASL_FOLDER,), install_asl, verify_asl),
}


def download(url: str, path: str, out=print) -> None:
    """Copy `url` (https:// or file://) to `path`, printing the progress."""
    try:
        with urllib.request.urlopen(url) as response, open(path, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, 0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if done - shown >= (total // 10 if total else 8 * CHUNK):
                    shown = done
                    out(f"  {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchError(f"cannot download {url}: {getattr(e, 'reason', e)}. Download it by "
                         "hand and pass --url file:///path/to/the/archive.tar.gz") from e
    out(f"  downloaded {done / 1e6:.1f} MB")


def unpack(archive: str, top: str, parts: Sequence[str], dest: str) -> str:
    """Unpack the regular files and folders `parts` (paths below `top`/) of tar.gz `archive`
    into `dest`; return ``dest/top``. Other members, links and paths with ``..`` are skipped,
    so nothing is written outside `dest`."""
    wanted = tuple(f"{top}/{part}" for part in parts)
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if (m.isfile() or m.isdir()) and ".." not in m.name.split("/")
                       and any(m.name == w or m.name.startswith(w + "/") for w in wanted)]
            if not members:
                raise FetchError(f"archive {archive} has none of {', '.join(wanted)}: not "
                                 "this dataset's")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **safe)
    except (tarfile.TarError, EOFError) as e:
        raise FetchError(f"archive {archive} is not a readable tar.gz: {e}") from e
    return os.path.join(dest, top)


def fetch(name: str, cache: Optional[str] = None, url: Optional[str] = None,
          out=print) -> str:
    """Put dataset `name` into ``<cache>/<name>`` (default cache :func:`fetch_root`) unless a
    complete copy is there; return that folder. The archive is unpacked and checked in a
    temporary folder beside it, and moved into place only when complete."""
    source = SOURCES[name]
    cache = os.path.abspath(os.path.expanduser(cache or fetch_root()))
    target = os.path.join(cache, name)
    if os.path.isdir(target) and verify_quietly(source, target) is None:
        out(f"{name}: already complete in {target}; nothing to do.")
        return target
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{name}-", dir=cache)
    try:
        archive = os.path.join(work, "archive.tar.gz")
        out(f"{name}: downloading {url or source.url}")
        download(url or source.url, archive, out)
        out(f"{name}: unpacking and checking")
        staged = os.path.join(work, name)
        source.install(unpack(archive, source.top, source.parts, work), staged)
        problem = source.verify(staged)
        if problem:
            raise FetchError(f"{name} from {url or source.url} is not complete: {problem}")
        if os.path.exists(target):  # an incomplete copy from an earlier attempt
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out(f"{name}: written to {target}")
    return target


def verify_quietly(source: Source, folder: str) -> Optional[str]:
    try:
        return source.verify(folder)
    except (OSError, ValueError) as e:
        return str(e)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="pgdet-fetch-data", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(SOURCES))
    parser.add_argument("--cache", help=f"data root to write into (default: ${ENV}, else "
                                        "~/.cache/pgdet/data)")
    parser.add_argument("--url", help="the archive's URL, e.g. file:// of a copy downloaded by "
                                      "hand (default: the dataset's GitHub archive)")
    args = parser.parse_args(argv)
    try:
        target = fetch(args.dataset, args.cache, args.url)
    except FetchError as e:
        sys.exit(f"error: {e}")
    if resolve_data_path(f"{PREFIX}{args.dataset}") != target:  # not found there by configs
        print(f"Configs find it with {ENV}={os.path.dirname(target)} in the environment.")


if __name__ == "__main__":
    main()
