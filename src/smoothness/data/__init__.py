"""The data: MNIST-binary tasks of MNIST and Fashion-MNIST (images: sources, balanced nested subsets, held-out
points; idx: the IDX files and their download) and one-dimensional regression tasks on the line (lines)."""
from smoothness.data.images import (
                                    ALL_PAIRS,
                                    DEFAULT_MEASURE_POINTS,
                                    SOURCES,
                                    BinaryTask,
                                    Source,
                                    balanced_prefix,
                                    balanced_subset,
                                    binary_task,
                                    check_pair,
                                    check_source,
                                    default_data_dir,
                                    input_dim,
    input_shape,
                                    is_source,
                                    load_source,
                                    task,
)
from smoothness.data.lines import LineSpec, LineTask, line_task

__all__ = ["ALL_PAIRS", "DEFAULT_MEASURE_POINTS", "SOURCES", "BinaryTask", "Source", "balanced_prefix",
           "balanced_subset", "binary_task", "check_pair", "check_source", "default_data_dir", "input_dim",
           "input_shape", "is_source", "load_source", "task", "LineSpec", "LineTask", "line_task"]
