"""What the download-and-convert scripts of scripts/data share: where the data come from, how
the pairs are written and the summary printed.

Each set's script (crackforest.py, uav75.py, bsdata.py) takes the data from one of

    (nothing)            the repository's GitHub archive at the pinned commit (needs internet)
    --from-git-dir PATH  a bare or ordinary clone holding that commit (git cat-file, no checkout)
    --from-dir PATH      an unpacked copy of the repository (its root folder)

and writes, outside any git repository,

    OUT/images/NAME.png  8-bit grey or RGB, as the set gives it
    OUT/masks/NAME.png   uint8, 0 background, 1 defect (same names)
    OUT/SOURCE.txt       repository, commit, license and what was taken
    OUT/groups.txt       where a set's images come in groups of near-duplicates (photos of one
                         spot over time): `NAME GROUP` per line; benchmarks/any_data.py keeps
                         each group whole on one side of its train / test split

Nothing is written before every pair has been read and checked. Bad input: a one-line error,
exit 2. `python scripts/data/common.py OUT` prints the summary of a converted folder.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

CAP = 300  # images at most per set: CPU experiments stay small


class InputError(Exception):
    """Bad input: said in one line, exit 2."""


# ------------------------------------------------------------------------------ the sources
class DirSource:
    """An unpacked copy of the repository."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"--from-dir {root}: no such folder: give the repository's root folder")

    def names(self) -> list[str]:
        return sorted(path.relative_to(self.root).as_posix()
                      for path in self.root.rglob("*") if path.is_file())

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class GitSource:
    """A clone (bare or not) holding the pinned commit; files are read with git cat-file."""

    def __init__(self, git_dir: Path, commit: str):
        self.git_dir, self.commit = Path(git_dir), commit
        if not self.git_dir.is_dir():
            raise InputError(f"--from-git-dir {git_dir}: no such folder: give a clone's git directory")
        found = self._git("cat-file", "-t", f"{commit}^{{commit}}", check=False)
        if found.returncode != 0:
            raise InputError(f"--from-git-dir {git_dir} does not hold commit {commit}: "
                             "fetch that commit into it, or give --from-dir or no source")

    def _git(self, *args, check=True):
        return subprocess.run(["git", "--git-dir", str(self.git_dir), *args],
                              capture_output=True, check=check)

    def names(self) -> list[str]:
        out = self._git("ls-tree", "-r", "--name-only", "-z", self.commit).stdout
        return sorted(name.decode() for name in out.split(b"\0") if name)

    def read(self, name: str) -> bytes:
        done = self._git("cat-file", "blob", f"{self.commit}:{name}", check=False)
        if done.returncode != 0:
            raise InputError(f"{self.git_dir}: {name} is listed at {self.commit[:8]} but its "
                             "content is missing (a partial snapshot): give --from-dir or no source")
        return done.stdout


def download(repository: str, commit: str, into: Path) -> DirSource:
    """The GitHub archive of `repository` ("owner/name") at `commit`, unpacked into `into`."""
    url = f"https://codeload.github.com/{repository}/tar.gz/{commit}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise InputError(f"could not download {url} ({exc}): give --from-git-dir or --from-dir "
                         "with a copy fetched elsewhere") from None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(into, filter="data")
    roots = [path for path in into.iterdir() if path.is_dir()]
    if len(roots) != 1:
        raise InputError(f"{url}: the archive does not hold one root folder")
    return DirSource(roots[0])


# ------------------------------------------------------------------------------ the command line
def parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="the folder to write (outside any git repository)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-git-dir", type=Path, help="a clone holding the pinned commit")
    source.add_argument("--from-dir", type=Path, help="an unpacked copy of the repository")
    parser.add_argument("--cap", type=int, default=CAP,
                        help=f"images at most, every k-th in sorted name order (default {CAP})")
    return parser


def check_out(out: Path) -> None:
    """The output folder: outside every git repository, and no pairs in it yet."""
    path = out.resolve()
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            raise InputError(f"--out {out} is inside the git repository {folder}: "
                             "write the data outside any repository")
    for part in ("images", "masks"):
        if (path / part).is_dir() and any((path / part).iterdir()):
            raise InputError(f"--out {out}: {part}/ already holds files: give a new or empty folder")
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out} is a file: give a folder")


def pick(names: list[str], cap: int) -> list[str]:
    """At most `cap` names, every k-th in sorted order."""
    names = sorted(names)
    step = -(-len(names) // cap) if cap > 0 else 1
    return names[::step]


def pick_keeping_share(with_defect: list[str], without: list[str], cap: int) -> list[str]:
    """All names if they fit in `cap`; else `cap` of them, evenly spread in sorted order within
    each group, the groups in the share the whole set has (images without a defect matter)."""
    total = len(with_defect) + len(without)
    if total <= cap:
        return sorted(with_defect + without)
    n_without = round(cap * len(without) / total)

    def spread(names: list[str], n: int) -> list[str]:
        names = sorted(names)
        return [names[i * len(names) // n] for i in range(n)]

    return sorted(spread(with_defect, cap - n_without) + spread(without, n_without))


def run(convert, argv, description: str, repository: str, commit: str, *, title: str,
        terms: str, taken: str) -> int:
    """Parse, check, read every pair (convert(source, cap) -> [(name, image, mask)] or
    [(name, image, mask, group)]), check that each mask has its image's size, then write,
    with SOURCE.txt saying the set's `title`, repository, commit, license (`terms`) and what was
    `taken`. Bad input: one line on stderr, exit 2,
    nothing written."""
    args = parser(description).parse_args(argv)
    try:
        if args.cap < 1:
            raise InputError(f"--cap {args.cap}: give a positive number of images")
        check_out(args.out)
        with tempfile.TemporaryDirectory() as scratch:
            if args.from_dir is not None:
                source, how = DirSource(args.from_dir), f"from the copy {args.from_dir}"
            elif args.from_git_dir is not None:
                source = GitSource(args.from_git_dir, commit)
                how = f"from the clone {args.from_git_dir}"
            else:
                source, how = download(repository, commit, Path(scratch)), "downloaded"
            pairs = convert(source, args.cap)
        for name, image, mask, *_ in pairs:
            if mask.shape != image.shape[:2]:
                raise InputError(f"{name}: mask {mask.shape} and image {image.shape[:2]} differ")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    provenance = (f"{title}\nRepository: github.com/{repository}\nCommit: {commit}\n"
                  f"License: {terms}\nTaken: {taken}\nObtained: {how}.\n")
    write(args.out, pairs, provenance)
    print(summary(args.out))
    return 0


# ------------------------------------------------------------------------------ writing
def decode(data: bytes, name: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)))
    except OSError as exc:
        raise InputError(f"{name}: not an image ({exc})") from None


def write(out: Path, pairs, provenance: str) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for name, image, mask, *_ in pairs:
        Image.fromarray(np.ascontiguousarray(image)).save(out / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8)).save(out / "masks" / f"{name}.png")
    groups = [(pair[0], pair[3]) for pair in pairs if len(pair) > 3]
    if groups:  # (name, image, mask, group): near-duplicates stay together in a split
        (out / "groups.txt").write_text("".join(f"{name} {group}\n" for name, group in groups))
    (out / "SOURCE.txt").write_text(provenance)


# ------------------------------------------------------------------------------ the summary
def summary(out: Path) -> str:
    """Images, sizes, share of images without a defect, defect share per image, stroke width."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    masks = [np.asarray(Image.open(path)) > 0 for path in sorted((Path(out) / "masks").glob("*.png"))]
    if not masks:
        return f"{out}: no masks"
    sizes = Counter(mask.shape for mask in masks)
    shares = np.array([mask.mean() for mask in masks])
    objects = [ndimage.label(mask, np.ones((3, 3)))[1] for mask in masks]  # 8-connected
    widths = [mask.sum() / max(1, skeletonize(mask).sum()) for mask in masks if mask.any()]
    with_defect = shares[shares > 0]
    lines = [
        f"{out}: {len(masks)} images",
        "  sizes (rows x cols): " + ", ".join(f"{r}x{c} ({n})" for (r, c), n in sizes.most_common()),
        f"  images without a defect: {np.mean(shares == 0):.1%}",
        (f"  defect share per image: median {np.median(shares):.2%} (over images with a defect "
         f"{np.median(with_defect) if len(with_defect) else 0:.2%}), min {shares.min():.2%}, "
         f"max {shares.max():.2%}"),
        (f"  mean foreground share: {shares.mean():.2%} per image, "
         f"{sum(m.sum() for m in masks) / sum(m.size for m in masks):.2%} of all pixels"),
        f"  connected defects (8-connected) per image: median {np.median(objects):.0f}, max {max(objects)}",
        f"  defect width (area / skeleton length, px): median {np.median(widths):.1f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(summary(Path(folder)))
