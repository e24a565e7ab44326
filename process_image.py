"""Convert public datasets into the training files: python process_image.py --config dataprocess/config.yaml

Writes image_map.json, captions.json and process_report.json into the config's output_dir, atomically, then the
sample store (captions.store/: the same samples as one memory-mapped Arrow table, which train.py reads).
"""

import argparse
import os
import sys

from common import exits_on
from common.quiet import quiet_libraries
from dataprocess.records import DataError


@exits_on(DataError)
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="dataprocess/config.yaml", help="YAML file naming the sources")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--no_store", action="store_true",
                        help="skip the sample store (train.py builds it on first use, or reads captions.json with "
                             "--data_store false)")
    args = parser.parse_args(argv)
    quiet_libraries()
    from common.store import build_store  # after parsing: --help answers without torch, datasets or pyarrow
    from dataprocess.pipeline import load_config, process

    config = load_config(args.config)
    report = process(config, progress=not args.no_progress)
    print(f"{'source':40} {'read':>8} {'written':>8} {'dropped':>8} {'missing':>8} {'corrupt':>8}")
    for name, r in report.items():
        print(f"{name:40} {r['samples_read']:8} {r['samples_written']:8} {r['samples_dropped']:8} "
              f"{r['images_missing']:8} {r['images_corrupt']:8}")
    written = "image_map.json, captions.json and process_report.json"
    if not args.no_store:
        build_store(os.path.join(config.output_dir, "image_map.json"), os.path.join(config.output_dir,
                                                                                   "captions.json"),
                    progress=not args.no_progress)
        written = "image_map.json, captions.json, process_report.json and captions.store/"
    print(f"wrote {config.output_dir}/{written}")


if __name__ == "__main__":
    sys.exit(main())
