"""python -m ddp_edf.data download NAME [NAME ...]   (fetch and verify on a machine with network)
   python -m ddp_edf.data where NAME                  (print the folder a run would use)"""

import argparse
import sys

from .datasets import DATASETS, cache_root, locate, prepare_dataset
from .errors import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddp_edf.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("download", help="download, verify (SHA-256) and decompress into the cache")
    fetch.add_argument("names", nargs="+", choices=sorted(DATASETS))
    where = sub.add_parser("where", help="print the folder the dataset would be read from")
    where.add_argument("name")
    where.add_argument("--dir", default="", help="data.dir to look in first")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            for name in args.names:
                prepare_dataset(name, allow_download=True)
                print(f"{name}: ready ({locate(name, allow_download=False)['train_images'].parent})")
            print(f"cache: {cache_root()}")
        else:
            print(locate(args.name, args.dir, allow_download=False)["train_images"].parent)
    except DataError as error:
        print(f"ddp_edf.data: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
