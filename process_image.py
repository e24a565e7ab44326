"""Convert public datasets into the training files: python process_image.py --config dataprocess/config.yaml

Writes image_map.json, captions.json and process_report.json into the config's output_dir, atomically.
"""

import argparse
import sys

from common import exits_on
from dataprocess.pipeline import load_config, process
from dataprocess.records import DataError


@exits_on(DataError)
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="dataprocess/config.yaml", help="YAML file naming the sources")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    report = process(config, progress=not args.no_progress)
    print(f"{'source':40} {'read':>8} {'written':>8} {'dropped':>8} {'missing':>8} {'corrupt':>8}")
    for name, r in report.items():
        print(f"{name:40} {r['samples_read']:8} {r['samples_written']:8} {r['samples_dropped']:8} "
              f"{r['images_missing']:8} {r['images_corrupt']:8}")
    print(f"wrote {config.output_dir}/image_map.json, captions.json and process_report.json")


if __name__ == "__main__":
    sys.exit(main())
