"""Convert public datasets into the training files: python process_image.py --config dataprocess/config.yaml

Writes image_map.json, captions.json and process_report.json into the config's output_dir, atomically.
"""

import argparse
import sys

from dataprocess.pipeline import load_config, process
from dataprocess.records import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="dataprocess/config.yaml", help="YAML file naming the sources")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        report = process(config, progress=not args.no_progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'source':40} {'read':>8} {'written':>8} {'dropped':>8} {'missing':>8} {'corrupt':>8}")
    for name, r in report.items():
        print(f"{name:40} {r['samples_read']:8} {r['samples_written']:8} {r['samples_dropped']:8} "
              f"{r['images_missing']:8} {r['images_corrupt']:8}")
    print(f"wrote {config.output_dir}/image_map.json, captions.json and process_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
