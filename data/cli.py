"""
What the command-line scripts share: argparse types that refuse bad values when
they are parsed, and the rule that a user's mistake is one line on stderr.

    p = Parser(description=...)          # argparse, with one-line errors
    p.add_argument("--steps", type=positive_int, ...)
    if __name__ == "__main__":
        run(main)          # ValueError / FileNotFoundError -> "train.py: error: ...", exit 2

A user error is a ValueError (LilaError included) or an OSError about a file,
raised on purpose by a reader or a check with a message that names the file,
field or flag; any other exception is a bug and keeps its traceback.
"""
import argparse
import math
import os
import sys


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, "prog: error: ...", exit status 2
    (plain argparse prints the whole usage first)."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _type(kind, ok, expected):
    """An argparse type: text -> kind(text), refused with "expected ..." unless ok(value)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v
    return parse


positive_int = _type(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _type(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")   # not nan, inf, 0
nonneg_float = _type(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
finite_float = _type(float, math.isfinite, "a finite number")
probability = _type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")                        # a dropout rate
share = _type(float, lambda v: 0 < v <= 1, "a number in (0, 1]")                              # a fraction of a size
nonempty = _type(str, lambda v: bool(v.strip()), "a non-empty string")
random_seed = _type(int, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)")                    # torch.manual_seed's range


def torch_device(text):
    """cpu, cuda or cuda:N, and a CUDA device only where this machine has it."""
    import torch      # only when a --device is parsed: data/ stays importable without torch
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA "
                                         "device(s)")
    return text


def writable_dir(path):
    """A folder to write into: absent (it will be made) or a folder, not a file."""
    if not path.strip():
        raise argparse.ArgumentTypeError("expected a folder to write into, got ''")
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a folder to write into, got {path!r} (a file)")
    return path


def writable_file(path):
    """A path a file can be written to (checked before a long run, not after)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not path.strip():
        raise argparse.ArgumentTypeError("expected a file name to write, got ''")
    if os.path.isdir(path) or (os.path.exists(parent) and not os.path.isdir(parent)):
        raise argparse.ArgumentTypeError(f"expected a file name to write, got {path!r} "
                                          f"({'a directory' if os.path.isdir(path) else parent + ' is a file'})")
    return path


def run(main):
    """main(), with user errors as one line on stderr and exit status 2."""
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError) as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
