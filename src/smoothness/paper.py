"""The reference paper in one place: Volhejn & Lampert, *Does SGD Implicitly Optimize for Smoothness?* (GCPR 2020).

Its protocol (sec. 4.1 and 4.3, with the details the original code fixes) is the default of every configuration in
this package, and its reported numbers are what the report sets ours beside. Nothing else in the package writes
one of these values down.
"""
# -- the protocol: the default of every configuration ---------------------------------------------------------------
HIDDEN = 256                 # one hidden layer of 256 ReLU units, scalar output (sec. 4.1)
ALPHA = 0.01                 # initialization scale: weights uniform on [-l, l], l = sqrt(6 alpha / (n_in + n_out))
BATCH = 64                   # minibatch size; SGD, reshuffled every epoch
LR = 0.01                    # learning rate
LR_PATH_LENGTH = 0.1         # ... with a path-length regularizer (FPL, GPL) and its lambda = 0 baseline (sec. 4.3)
THRESHOLD = 1e-5             # stop when the epoch's training loss (MSE) is below this
MAX_EPOCHS = 25_000          # epoch cap; a model that reaches it is not converged
MAX_EPOCHS_GN = 15_000       # the cap of the gradient-norm runs in the original code
MEASURE_POINTS = 1000        # held-out points of the sampled measures
SEGMENTS = 1000              # random segments of FPL and GPL
POINTS_PER_SEGMENT = 100     # equally spaced points per segment (99 differences)
PENALTY_POINTS = 10          # points per segment of the path-length penalties in training (the original code's
                             # final version; an earlier one used 100)
N_TABLE2 = 10_000            # training points per task in Table 2 (5,000 of each digit)
SIZES_TABLE1 = (64, 128, 256, 512, 1024, 2048, 4096, 8192)   # nested training sizes of Table 1
SEEDS_TABLE1 = 3             # repetitions per task in Table 1

# -- the numbers it reports -----------------------------------------------------------------------------------------
# Table 1: Kendall's tau between N and each measure, mean and std over 45 tasks x 3 seeds
TABLE1 = {"gradient_norm": (0.16, 0.32), "function_path_length": (0.07, 0.46),
          "gradient_path_length": (1.0, None), "weights_product": (1.0, None)}
# Table 2: unregularized mean, regularized mean, lower bound l_S, r_norm mean, r_norm std (45 tasks, N = 10,000)
TABLE2 = {"gradient_norm": (0.93, 0.29, 0, 0.31, 0.13), "function_path_length": (1.17, 1.05, 1, 0.33, 0.27),
          "gradient_path_length": (2.62, 2.35, 0, 0.89, 0.06), "weights_product": (12.84, 11.57, 0, 0.90, 0.03)}
# The coefficients behind Table 2: the largest of its values for each regularizer (it also ran GN at 1e-5 and 1e-4
# and WP at 1e-5), at the learning rates above.
LAMBDAS = {"gradient_norm": 1e-3, "weights_product": 3e-5, "function_path_length": 1e-4,
           "gradient_path_length": 1e-5}
