"""Analyses of a results table (DataFrames in, DataFrames out): the paper's Tables 1 and 2 (tables), the measures
and r_norm along N, the learning rate and the depth (series), the verdict per measure (verdict), optimality in one
dimension (optimality), and optimizers compared on flatness and smoothness (flatness)."""
from smoothness.analysis.series import by_depth, by_lr, by_size, r_norm_by_n
from smoothness.analysis.tables import (
                                        MEASURES,
                                        PAPER_TABLE1,
                                        PAPER_TABLE2,
                                        REGULARIZED_MEASURE,
                                        SETTING,
                                        figure2_data,
                                        kendall_taus,
                                        setting_label,
                                        status_counts,
                                        table1,
                                        table2,
                                        table2_ratios,
)

__all__ = ["MEASURES", "PAPER_TABLE1", "PAPER_TABLE2", "REGULARIZED_MEASURE", "SETTING", "by_depth", "by_lr",
           "by_size", "figure2_data", "kendall_taus", "r_norm_by_n", "setting_label", "status_counts", "table1",
           "table2", "table2_ratios"]
