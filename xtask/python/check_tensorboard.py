"""Reads TensorBoard event files with the real `tensorboard` package and prints their scalars
as JSON, for crates/mlae-tensorboard/tests/tensorboard_reads.rs to compare with what it wrote.

    check_tensorboard.py DIR          one run's log directory, through EventAccumulator:
                                      {"tag": [[step, value], ...], ...}
    check_tensorboard.py --multi DIR  a directory of runs (a sweep), through EventMultiplexer's
                                      AddRunsFromDirectory, as TensorBoard's --logdir finds them:
                                      {"run": {"tag": [[step, value], ...], ...}, ...}

Run names are the runs' directories relative to DIR (`runA/tb`). Every scalar is kept (no
reservoir sampling). Values are TensorBoard's float32 values, printed exactly.

Run:  .venv/bin/python xtask/python/check_tensorboard.py [--multi] DIR
It installs its pinned tensorboard into the running interpreter when it is missing.
"""
import json
import sys

from pins import ensure  # noqa: E402  (xtask/python/pins.py)

ensure("tensorboard")

from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.backend.event_processing import event_multiplexer  # noqa: E402

KEEP_ALL_SCALARS = {event_accumulator.SCALARS: 0}


def scalars(tags, read):
    """{tag: [[step, value], ...]} for the scalar tags, `read(tag)` giving their events."""
    return {tag: [[e.step, e.value] for e in read(tag)] for tag in sorted(tags)}


def main(argv):
    if len(argv) == 2 and argv[0] == "--multi":
        mux = event_multiplexer.EventMultiplexer(size_guidance=KEEP_ALL_SCALARS)
        mux.AddRunsFromDirectory(argv[1]).Reload()
        out = {
            run: scalars(tags[event_accumulator.SCALARS], lambda tag, run=run: mux.Scalars(run, tag))
            for run, tags in sorted(mux.Runs().items())
        }
    elif len(argv) == 1:
        acc = event_accumulator.EventAccumulator(argv[0], size_guidance=KEEP_ALL_SCALARS)
        acc.Reload()
        out = scalars(acc.Tags()[event_accumulator.SCALARS], acc.Scalars)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
