"""chatterd benchmarks: ratios against the baseline and the floor, measured in the same run."""
