"""Likelihood experiments: train, estimate log Z by AIS, report test log-likelihood in nats.

``python -m capsnp experiment --dataset mnist --models rbm-cd1,rbm-pcd,r`` trains each named
configuration on the binarised training set (stochastic binarisation, seed 0; Salakhutdinov &
Murray 2008), estimates log Z with AIS from a base-rate model fitted to the training means, and
writes into the output directory, for each model: ``<name>.json`` (configuration, epochs,
wall-clock seconds, log Z with its error, test log-likelihood), ``<name>_model.npz``,
``<name>_samples.png`` (persistent chains and fresh chains from noise), and ``results.md``.

Test log-likelihood per image (6.5):

* RBM and Model P: ``log p(v) = -F(v) - log Z`` with the closed-form free energy;
* Model R: ``log p(v) ~ log p~(v) - log Z`` with ``log p~(v)`` estimated by importance sampling
  over routing assignments, proposal the mean-field coefficients (4.10). Both estimates are
  biased low, so R's number is neither a lower nor an upper bound.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .ais import ais_log_partition, default_betas
from .capsules import to_capsules
from .cli import _positive_int
from .datasets import binarize, load_dataset
from .estimators import BernoulliRBM, CapsulePoE, RoutedCapsuleRBM, load_estimator
from .plots import image_grids

__all__ = ["PRESETS", "make_estimator", "test_log_likelihood", "run"]

# The RBM-500's training recipe (`rbm-pcd-long`) as RoutedCapsuleRBM settings, for the *-rbm rows
_RBM_RECIPE = dict(n_chains=100, learning_rate=0.01, momentum=0.8, weight_decay=2e-4)
# ... and that recipe itself for the Bernoulli RBM (`rbm-pcd-long`), for any hidden layer size
_RBM_PCD_LONG = dict(learning_rate=0.01, batch_size=100, cd_k=1, persistent=True, momentum=0.8,
                     weight_decay=2e-4, lr_schedule="linear")
# Two capsules of 500 units sharing one weight tensor (docs/MODEL_RB.md, tied weights):
# 392,000 weights, the RBM-500's, which the model contains (route every patch to one parent)
_TIED_2X500 = dict(n_capsules=2, capsule_dim=500, assignment_biases=True, tie_weights=True,
                   **_RBM_RECIPE)
# Two free capsules of 250 units with assignment biases (docs/MODEL_RB.md) under that recipe
_BIASED_2X250 = dict(n_capsules=2, capsule_dim=250, assignment_biases=True, **_RBM_RECIPE)
# ... and without assignment biases (plain Model R)
_PLAIN_2X250 = dict(n_capsules=2, capsule_dim=250, **_RBM_RECIPE)
# The step that suits the capsule model (docs/results.md section 13): a larger rate, momentum 0.5
_STEP_M5_LR2 = dict(momentum=0.5, learning_rate=0.02)
# The averaged recipe (sections 21 to 29) for Model R with a shared capsule (4c): two routed
# capsules with assignment biases, routing stopped after 3 updates, 1 sweep of 300 chains,
# parameters averaged over 1,000 updates; a preset adds the capsule size and shared units
_SHARED_AVG = dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3, n_chains=300, average=1000)

# Named configurations. Weight counts: RBM-500 has 784 * 500 = 392,000 weights; a capsule model
# with 4x4 patches has 784 * J * d_h weights.
PRESETS = {
    "rbm-cd1": (BernoulliRBM, dict(n_components=500, learning_rate=0.05, batch_size=100, cd_k=1,
                                   persistent=False, momentum=0.9, weight_decay=2e-4)),
    # PCD at 0.02 with momentum 0.9 broke down when the momentum rose after epoch 5
    # (reconstruction error 21 -> 42 bits, test log-likelihood -173.7): a smaller step
    "rbm-pcd": (BernoulliRBM, dict(n_components=500, learning_rate=0.01, batch_size=100, cd_k=1,
                                   persistent=True, momentum=0.8, weight_decay=2e-4)),
    # The PCD baseline given a capsule run's time budget (100 epochs took 1,017 s, the R runs at
    # 392,000 weights 1,500 to 1,700 s), the rate decaying linearly to 4% of its start
    "rbm-pcd-long": (BernoulliRBM, dict(n_components=500, **_RBM_PCD_LONG)),
    # The same recipe over 40 epochs (the rate decays over them): the RBM-500 at the epochs of
    # the 40-epoch capsule rows. Run with --epochs 40.
    "rbm-pcd-long-40": (BernoulliRBM, dict(n_components=500, **_RBM_PCD_LONG)),
    # ... and over the epochs that cost what 40 epochs of the untied two-capsule model cost
    # (side by side, docs/results/epoch_cost.py: 1.74 times the RBM's epoch on MNIST, 1.5 on
    # Fashion-MNIST). Run with --epochs 70 (MNIST) and --epochs 60 (Fashion-MNIST).
    "rbm-pcd-long-70": (BernoulliRBM, dict(n_components=500, **_RBM_PCD_LONG)),
    "rbm-pcd-long-60": (BernoulliRBM, dict(n_components=500, **_RBM_PCD_LONG)),
    # The RBM-250 (196,000 weights: one capsule of the J = 2, d_h = 250 models) under the same
    # recipe: what the second capsule of rb-2x250-rbm adds
    "rbm-250-pcd-long": (BernoulliRBM, dict(n_components=250, **_RBM_PCD_LONG)),
    # The RBM-500's recipe with centred gradient steps (5.9); 100 epochs, and 40 (--epochs 40)
    "rbm-pcd-long-centred": (BernoulliRBM, dict(n_components=500, centring=True, **_RBM_PCD_LONG)),
    "rbm-pcd-long-centred-40": (BernoulliRBM, dict(n_components=500, centring=True, **_RBM_PCD_LONG)),
    # The capsule model's better step (rate 0.02, momentum 0.5 throughout) given to the RBM-500:
    # the control that keeps the equal-time comparison fair. Run with --epochs 40.
    "rbm-pcd-long-m5-lr2-40": (BernoulliRBM, dict(n_components=500, **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... over 100 epochs, the control of rb-2x250-m5-lr2 (run with --epochs 100)
    "rbm-pcd-long-m5-lr2": (BernoulliRBM, dict(n_components=500, **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... over the epochs that cost what 40 epochs of the untied two-capsule model with its
    # routing stopped after 3 iterations cost on Fashion-MNIST (1.40 RBM-500 epochs each,
    # trained models side by side, docs/results/trained_epoch_cost.py). Run with --epochs 56.
    "rbm-pcd-long-m5-lr2-56": (BernoulliRBM, dict(n_components=500, **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... with 3 Gibbs sweeps of the persistent chains per update: the control of the capsule
    # model's 3-sweep row (rb-2x250-m5-lr2-mf3-k3-equal-time). Run with --epochs 40.
    "rbm-pcd-long-m5-lr2-k3-40": (BernoulliRBM, dict(n_components=500, **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                                        "cd_k": 3})),
    # ... with 1 sweep of 300 persistent chains: the control of rb-2x250-m5-lr2-mf3-c300-equal-time
    # (run with --epochs 40)
    "rbm-pcd-long-m5-lr2-c300-40": (BernoulliRBM, dict(n_components=500, n_chains=300,
                                                         **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... over 100 epochs, the control of rb-2x250-m5-lr2-mf3-c300 (run with --epochs 100)
    "rbm-pcd-long-m5-lr2-c300": (BernoulliRBM, dict(n_components=500, n_chains=300,
                                                      **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... both publishing the moving average of the parameters over 1,000 updates (average=1000,
    # docs/results.md section 21; the same models as param_averaging.py's "+ema1000" rows)
    "rbm-pcd-long-m5-lr2-c300-avg-40": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                             **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    "rbm-pcd-long-m5-lr2-c300-avg": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                          **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... with five times the weight decay (1e-3), the control of rs-250-2x125-m5-lr2-mf3-c300-avg-wd1e3
    "rbm-pcd-long-m5-lr2-c300-avg-wd1e3": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                                **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                                   "weight_decay": 1e-3})),
    # ... with a quarter of the weight decay (5e-5), the control of
    # rs-250-2x125-m5-lr2-mf3-c300-avg-wd5e5 (run with --epochs 300)
    "rbm-pcd-long-m5-lr2-c300-avg-wd5e5": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                                **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                                   "weight_decay": 5e-5})),
    # ... trained in float32 (half the bytes per step), the control of
    # rs-250-2x125-m5-lr2-mf3-c300-avg-f32 (run with --epochs 100)
    "rbm-pcd-long-m5-lr2-c300-avg-f32": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                              **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                                 "dtype": np.float32})),
    # ... at rate 0.03, the control of rs-400-2x50-m5-lr3-mf3-c300-avg (run with --epochs 300)
    "rbm-pcd-long-m5-lr3-c300-avg": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                          **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                             "learning_rate": 0.03})),
    # ... at rate 0.04, the control of rs-400-2x50-m5-lr4-mf3-c300-avg (run with --epochs 300)
    "rbm-pcd-long-m5-lr4-c300-avg": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                          **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                             "learning_rate": 0.04})),
    # ... at rate 0.03 with centred steps (5.9), the control of rs-400-2x50-m5-lr3-mf3-c300-avg-sc
    # (run with --epochs 300; docs/results.md section 45: -87.02, 1.50 below the plain steps)
    "rbm-pcd-long-centred-m5-lr3-c300-avg": (BernoulliRBM, dict(n_components=500, n_chains=300, average=1000,
                                                                  centring=True, **{**_RBM_PCD_LONG, **_STEP_M5_LR2,
                                                                                    "learning_rate": 0.03})),
    # ... with the offsets' moving average over 100 updates (5.10), Melchior, Fischer and
    # Wiskott's smoothing: section 45's minibatch offsets bias the step (docs/MODEL_RB.md (5.11))
    # (run with --epochs 300 beside rs-400-2x50-m5-lr3-mf3-c300-avg-sc-ca100; docs/results.md
    # sections 46 and 48: -85.52 and -85.26 on seeds 0 and 1)
    "rbm-pcd-long-centred-m5-lr3-c300-avg-ca100": (BernoulliRBM, dict(
        n_components=500, n_chains=300, average=1000, centring=True, centring_average=100,
        **{**_RBM_PCD_LONG, **_STEP_M5_LR2, "learning_rate": 0.03})),
    # ... with 250 hidden units (196,000 weights, one capsule of rb-2x250-m5-lr2-mf3-c300-avg):
    # what the second capsule adds under the averaged recipe (run with --epochs 200)
    "rbm-250-pcd-long-m5-lr2-c300-avg": (BernoulliRBM, dict(n_components=250, n_chains=300, average=1000,
                                                              **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... and with centred steps too (run with --epochs 40)
    "rbm-pcd-long-centred-m5-lr2-40": (BernoulliRBM, dict(n_components=500, centring=True,
                                                          **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    "rbm-pcd-long-centred-visible-40": (BernoulliRBM, dict(n_components=500, centring="visible", **_RBM_PCD_LONG)),
    "r": (RoutedCapsuleRBM, dict(n_capsules=16, capsule_dim=8, n_chains=500)),
    "r-500": (RoutedCapsuleRBM, dict(n_capsules=50, capsule_dim=10, n_chains=500)),
    # The same 392,000 weights split into fewer, larger capsules (J * d_h = 500). J = 1 is the
    # RBM-500 exactly (sec. 4), so these runs trace the way from the RBM to many small capsules.
    # Momentum 0.9 (after the 5 warm-up epochs at 0.5) broke both down in epoch 6: the
    # reconstruction error went from 27 to 56 bits (J = 2) and from 31 to 54 (J = 10).
    "r-1x500": (RoutedCapsuleRBM, dict(n_capsules=1, capsule_dim=500, n_chains=500, momentum=0.5)),
    "r-2x250": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, n_chains=500, momentum=0.5)),
    "r-10x50": (RoutedCapsuleRBM, dict(n_capsules=10, capsule_dim=50, n_chains=500, momentum=0.5)),
    # The RBM-long recipe's chain count (100 chains, one per batch image) at its epoch count:
    # 500 chains cost about 3 times as much per update as the data term, so 100 chains buy
    # about 3 times the epochs in the same time. Run with --epochs 100.
    "r-2x250-c100": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, n_chains=100, momentum=0.5)),
    # Its control: one capsule of 500 units, i.e. the RBM-500 (sec. 4), under the same recipe.
    "r-1x500-c100": (RoutedCapsuleRBM, dict(n_capsules=1, capsule_dim=500, n_chains=100, momentum=0.5)),
    # The RBM-250 (half the weights) under the same recipe: what one capsule of the J = 2 model
    # is worth alone (its routing sends 80 to 95% of the ink patches to one capsule).
    "r-1x250-c100": (RoutedCapsuleRBM, dict(n_capsules=1, capsule_dim=250, n_chains=100, momentum=0.5)),
    # With learned prior routing logits beta: a blank patch's routing posterior is softmax(beta)
    # (4.3), so the prior is what routes the two thirds of the patches that have no ink.
    "r-2x250-c100-prior": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, n_chains=100,
                                                  momentum=0.5, learn_prior=True)),
    # The same with 2x2 patches (I = 196, d_v = 4): finer routing, same 392,000 weights.
    "r-2x250-p2-c100": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, patch=2, n_chains=100,
                                               momentum=0.5)),
    # The RBM-500's own recipe (`rbm-pcd-long`: rate 0.01 decayed linearly, momentum 0.8,
    # weight decay 2e-4, 100 chains): the *-c100 rows used rate 0.05 and momentum 0.5, an
    # effective step twice the RBM's. J = 1 is the RBM-500 itself, so it must reproduce -90.45.
    "r-1x500-rbm": (RoutedCapsuleRBM, dict(n_capsules=1, capsule_dim=500, **_RBM_RECIPE)),
    "r-2x250-rbm": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, **_RBM_RECIPE)),
    # The same with assignment biases (docs/MODEL_RB.md): prediction biases C_ij and visible
    # biases A_ij per child and parent, so a blank patch carries routing information and a
    # capsule can keep the patches routed to it blank without spending its weights on it.
    "rb-2x250-rbm": (RoutedCapsuleRBM, dict(_BIASED_2X250)),
    # ... and under the *-c100 recipe (rate 0.05, momentum 0.5), the better one for J = 2
    "rb-2x250-c100": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, n_chains=100, momentum=0.5,
                                             assignment_biases=True)),
    # rb-2x250-rbm at the RBM-500's training time: an epoch costs about 2.5 times the RBM's
    # (docs/results/epoch_cost.py; 3.1 times before the kernels stopped forming the batch's
    # predictions), so run with --epochs 40 (the rate decays over those epochs)
    "rb-2x250-rbm-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250)),
    # ... and with twice the rate (0.02, decayed), for a shorter budget. Run with --epochs 40.
    "rb-2x250-rbm-rate2-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, learning_rate=0.02)),
    # rb-2x250-c100 at the same budget (run with --epochs 40)
    "rb-2x250-c100-equal-time": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, n_chains=100,
                                                        momentum=0.5, assignment_biases=True)),
    # rb-2x250-rbm with 2x2 patches (I = 196, d_v = 4): section 7 found 2x2 patches as good in 28
    # epochs as 4x4 in 100. Its biases: C (196, 2, 250) and A (196, 2, 4), 99,568 parameters.
    "rb-2x250-p2-rbm": (RoutedCapsuleRBM, dict(n_capsules=2, capsule_dim=250, patch=2,
                                               assignment_biases=True, **_RBM_RECIPE)),
    # Tied capsules (_TIED_2X500), 100 epochs; and over 40 epochs, the epochs of the other
    # 40-epoch rows (run with --epochs 40)
    "rt-2x500-rbm": (RoutedCapsuleRBM, _TIED_2X500),
    "rt-2x500-rbm-40": (RoutedCapsuleRBM, _TIED_2X500),
    # ... with the untied model's better step (rate 0.02, momentum 0.5 throughout). Run with --epochs 40.
    "rt-2x500-m5-lr2-40": (RoutedCapsuleRBM, dict(_TIED_2X500, **_STEP_M5_LR2)),
    # ... with the mean field stopped after 3 iterations (docs/results.md section 14)
    "rt-2x500-m5-lr2-mf3-40": (RoutedCapsuleRBM, dict(_TIED_2X500, **_STEP_M5_LR2, max_routing=3)),
    "rt-2x500-m5-lr2-mf3": (RoutedCapsuleRBM, dict(_TIED_2X500, **_STEP_M5_LR2, max_routing=3)),  # --epochs 100
    # The same started at the RBM it contains: a learned prior logit beta_i1 = 6 routes 99.75% of
    # every patch to parent 1 at the start; and a softer start, beta_i1 = 2 (88%). Run with
    # --epochs 40.
    "rt-2x500-pin6-40": (RoutedCapsuleRBM, dict(_TIED_2X500, learn_prior=True, first_parent_logit=6.0)),
    "rt-2x500-pin2-40": (RoutedCapsuleRBM, dict(_TIED_2X500, learn_prior=True, first_parent_logit=2.0)),
    # rt-2x500-pin6-40 with C and A learning at 1/49 of the rate, so that sum_i C_ij, a hidden
    # bias when the image is on one parent, moves at gamma's rate. Run with --epochs 40.
    "rt-2x500-pin6-slowc-40": (RoutedCapsuleRBM, dict(_TIED_2X500, learn_prior=True, first_parent_logit=6.0,
                                                      assignment_bias_rate=1 / 49)),
    # The same with sampled data statistics (3 clamped sweeps on (h, a) from the mean-field
    # routing) in place of the mean-field ones. Run with --epochs 40.
    "rt-2x500-post3-40": (RoutedCapsuleRBM, dict(_TIED_2X500, posterior_sweeps=3)),
    # ... started at beta_i1 = 2 (learned), the softer start of rt-2x500-pin2-40. Run with --epochs 40.
    "rt-2x500-pin2-post3-40": (RoutedCapsuleRBM, dict(_TIED_2X500, posterior_sweeps=3, learn_prior=True,
                                                      first_parent_logit=2.0)),
    # Centred gradient steps (docs/MODEL_RB.md, centring; offsets the batch's data means), the
    # model unchanged: the tied model and the untied biased one (the latter at the RBM-500's
    # training time), with the interaction centred, and with the assignment biases centred too
    # ("all", which moves beta). Run with --epochs 40.
    "rt-2x500-centred-40": (RoutedCapsuleRBM, dict(_TIED_2X500, centring="interaction")),
    "rb-2x250-centred-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, centring="interaction")),
    "rt-2x500-centred-all-40": (RoutedCapsuleRBM, dict(_TIED_2X500, centring="all")),
    # rb-2x250-centred-equal-time with the momentum kept at 0.5 (every centred capsule run's
    # routing went decisive in the epoch the momentum rose to 0.8)
    "rb-2x250-centred-m5-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, centring="interaction",
                                                              momentum=0.5)),
    # the tied model centred with the momentum kept at 0.5 (run with --epochs 40)
    "rt-2x500-centred-m5-40": (RoutedCapsuleRBM, dict(_TIED_2X500, centring="interaction", momentum=0.5)),
    # ... and rb-2x250-centred-m5-equal-time's control without centring
    "rb-2x250-m5-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, momentum=0.5)),
    # rb-2x250-m5-equal-time's step size and momentum taken apart (the effective step rate / (1 -
    # momentum) was 0.1, 0.05 and 0.02 in the c100, rbm and m5 rows, scoring -100.0, -99.6, -98.6):
    # half and twice the rate at momentum 0.5, and the m5 row's effective step without momentum
    "rb-2x250-m5-lr5-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, momentum=0.5, learning_rate=0.005)),
    "rb-2x250-m5-lr2-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2)),
    "rb-2x250-m0-lr2-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, momentum=0.0, learning_rate=0.02)),
    "rb-2x250-m5-lr3-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, momentum=0.5, learning_rate=0.03)),
    # rb-2x250-m5-lr2-equal-time over 100 epochs (run with --epochs 100)
    "rb-2x250-m5-lr2": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2)),
    # rb-2x250-m5-lr2-equal-time with cheaper data-side routing: the mean field (4.6) stopped
    # after 3 iterations (Sabour et al.'s count; the converged routing takes 5 to 7 at the end),
    # or at a tolerance ten times looser. The question: does the cheaper epoch buy more epochs
    # than it loses in likelihood?
    "rb-2x250-m5-lr2-mf3-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3)),
    "rb-2x250-m5-lr2-tol2-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, routing_tol=1e-2)),
    # ... stopped after 1 and 2 iterations, and after 3 over 100 epochs (run with --epochs 100)
    "rb-2x250-m5-lr2-mf1-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=1)),
    "rb-2x250-m5-lr2-mf2-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=2)),
    "rb-2x250-m5-lr2-mf3": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3)),
    # ... at rate 0.03 (converged routing scored -97.61 there, within seed noise of 0.02's -96.85)
    "rb-2x250-m5-lr3-mf3-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, momentum=0.5, learning_rate=0.03,
                                                              max_routing=3)),
    # ... with 3 Gibbs sweeps of the persistent chains per update instead of 1: if the chains
    # on (v, a) mix too slowly for the step, the model statistics lag and this gains
    "rb-2x250-m5-lr2-mf3-k3-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                 cd_k=3)),
    # ... with 1 sweep of 300 persistent chains instead of 3 sweeps of 100: the same chain
    # sweeps per update. If what the 3 sweeps buy is model statistics averaged over more nearly
    # independent chain states (less noise per step, less alike from one step to the next),
    # this gains as much; if it is chains that move further between updates, it does not.
    "rb-2x250-m5-lr2-mf3-c300-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                   n_chains=300)),
    # ... over 100 epochs (run with --epochs 100)
    "rb-2x250-m5-lr2-mf3-c300": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3, n_chains=300)),
    # ... both publishing the moving average of the parameters over 1,000 updates (section 21)
    "rb-2x250-m5-lr2-mf3-c300-avg-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                       n_chains=300, average=1000)),
    "rb-2x250-m5-lr2-mf3-c300-avg": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                            n_chains=300, average=1000)),
    # A shared capsule of 250 units that every patch reaches, beside two routed capsules of 125
    # (docs/MODEL_RB.md, (4c.1)): 784 * (250 + 2 * 125) = 392,000 weights, the RBM-500's; under
    # the averaged recipe above (run with --epochs 100, 200 or 300)
    "rs-250-2x125-m5-lr2-mf3-c300-avg": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=125, shared_units=250)),
    # ... the same budget split 400 shared + two routed capsules of 50: 784 * (400 + 2 * 50) =
    # 392,000 weights; does a smaller routed part cost less? (run with --epochs 100;
    # docs/results.md section 29: about the same cost and likelihood)
    "rs-400-2x50-m5-lr2-mf3-c300-avg": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=50, shared_units=400)),
    # ... (400 + 2 x 50) at rate 0.03: it fits its training images worse than the RBM-500 and
    # generalises better, so does a larger step, smoothed by the averaged parameters, buy it
    # more fit in the epochs that equal time allows? (run with --epochs 212, the RBM-500's 300)
    "rs-400-2x50-m5-lr3-mf3-c300-avg": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=50, shared_units=400,
                                                               learning_rate=0.03)),
    # ... (400 + 2 x 50) at rate 0.04: on MNIST rate 0.03 gained it 0.10 nats over 0.02 at
    # equal time (three seeds) and bought it fit, what it lacks against the RBM-500; does the
    # next step up gain again? (run with --epochs 212 beside rbm-pcd-long-m5-lr4-c300-avg;
    # docs/results.md section 44: no)
    "rs-400-2x50-m5-lr4-mf3-c300-avg": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=50, shared_units=400,
                                                               learning_rate=0.04)),
    # ... (400 + 2 x 50) at rate 0.03 with the shared capsule's steps centred (docs/MODEL_RB.md,
    # (4c.8)): the centred step is the lever the literature credits for RBMs near -85 nats, and
    # unlike centring the routed capsules its offsets never reach a routing logit (run with
    # --epochs 212 beside rbm-pcd-long-centred-m5-lr3-c300-avg; docs/results.md section 45: centred
    # steps cost it 1.42 nats and the RBM-500 1.50)
    "rs-400-2x50-m5-lr3-mf3-c300-avg-sc": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=50, shared_units=400,
                                                                  learning_rate=0.03, shared_centring=True)),
    # ... with the shared offsets' moving average over 100 updates (5.10) (run with --epochs 212
    # beside rbm-pcd-long-centred-m5-lr3-c300-avg-ca100; docs/results.md sections 46 to 49:
    # -85.30 and -85.32 on seeds 0 and 1 by forward AIS, level with it, but many fresh chains end
    # in a blocky mode that forward AIS never visits; AIS restricted to it puts 0.9% and 99% of
    # the mass there, so seed 1 scores about -90.2)
    "rs-400-2x50-m5-lr3-mf3-c300-avg-sc-ca100": (RoutedCapsuleRBM, dict(
        _SHARED_AVG, capsule_dim=50, shared_units=400, learning_rate=0.03, shared_centring=True,
        centring_average=100)),
    # ... with chain restarts (docs/MODEL_RB.md (5.12)): each update replaces each persistent
    # chain with probability 0.002 (a chain lives 500 updates on average) by a fresh chain at
    # noise, which falls into the blocky box within 10 sweeps on seed 1's model, so that the
    # negative phase visits the box and pushes it down (run with --epochs 212 --seed 1 beside
    # rbm-pcd-long-centred-m5-lr3-c300-avg-ca100; docs/results.md section 50)
    "rs-400-2x50-m5-lr3-mf3-c300-avg-sc-ca100-rs2": (RoutedCapsuleRBM, dict(
        _SHARED_AVG, capsule_dim=50, shared_units=400, learning_rate=0.03, shared_centring=True,
        centring_average=100, chain_restart=0.002)),
    # ... (250 + 2 x 125) with five times the weight decay (1e-3 instead of 2e-4), beside the
    # RBM-500 given the same: at 300 epochs both models score about 2.4 to 3 nats higher on
    # training images than on test images; does a stronger pull towards 0 close that gap?
    # (run with --epochs 200)
    "rs-250-2x125-m5-lr2-mf3-c300-avg-wd1e3": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=125, shared_units=250,
                                                                      weight_decay=1e-3)),
    # ... (250 + 2 x 125) with a quarter of the weight decay (5e-5): five times 2e-4 cost the
    # shared-capsule model more than the RBM-500 (it fits its training images worse and
    # generalises better); does less decay gain it more? (run with --epochs 256, the epochs
    # that cost what the RBM-500's 300 cost)
    "rs-250-2x125-m5-lr2-mf3-c300-avg-wd5e5": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=125, shared_units=250,
                                                                      weight_decay=5e-5)),
    # ... (250 + 2 x 125) trained in float32: what single precision saves per step, beside the
    # RBM-500 given the same, and whether the likelihood holds (run with --epochs 100)
    "rs-250-2x125-m5-lr2-mf3-c300-avg-f32": (RoutedCapsuleRBM, dict(_SHARED_AVG, capsule_dim=125, shared_units=250,
                                                                    dtype=np.float32)),
    # ... at rate 0.03: with less noise per step (300 chains), does a larger step now pay?
    # (with 100 chains 0.03 scored -97.61 against 0.02's -96.85, within seed noise)
    "rb-2x250-m5-lr3-mf3-c300-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, momentum=0.5, learning_rate=0.03,
                                                                   max_routing=3, n_chains=300)),
    # ... and 1,000 chains: does the gain go on?
    "rb-2x250-m5-lr2-mf3-c1000-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                    n_chains=1000)),
    # Chain statistics averaged over h given (v, a) instead of over a given (v, h)
    # (rao_blackwell="hidden", docs/MODEL_RB.md (4b.10)): the same draws, less noise per chain in
    # the W, gamma and C statistics. With 100 chains (the cheaper epoch) and with 300. Run with
    # --epochs 40.
    "rb-2x250-m5-lr2-mf3-rbh-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                  rao_blackwell="hidden")),
    "rb-2x250-m5-lr2-mf3-c300-rbh-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                       n_chains=300, rao_blackwell="hidden")),
    # ... and at the routes the sweep redraws with the current parameters (one more hidden pass):
    # are the routes that entered the sweep, drawn before the last update, what costs the
    # "hidden" rows their likelihood?
    "rb-2x250-m5-lr2-mf3-c300-rbn-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                       n_chains=300, rao_blackwell="hidden-redrawn")),
    # Sparsity targets (4b.11): the hidden biases pulled towards firing probability 0.1 on the
    # data (trained models fire at 0.28 on average), at cost 0.1 and 1.0; the RBM-500 beside
    # them at cost 0.1 (run with --epochs 40)
    "rb-2x250-m5-lr2-mf3-c300-sp01-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                        n_chains=300, sparsity_cost=0.1)),
    "rb-2x250-m5-lr2-mf3-c300-sp1-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                       n_chains=300, sparsity_cost=1.0)),
    "rbm-pcd-long-m5-lr2-c300-sp01-40": (BernoulliRBM, dict(n_components=500, n_chains=300, sparsity_cost=0.1,
                                                            **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... with the step on every parameter of the hidden units' input (W, gamma, C; RBM: W, b):
    # on gamma alone the capsule model escaped the pull through C (docs/results.md section 24)
    "rb-2x250-m5-lr2-mf3-c300-spi01-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                         n_chains=300, sparsity_cost=0.1,
                                                                         sparsity_on="inputs")),
    "rbm-pcd-long-m5-lr2-c300-spi01-40": (BernoulliRBM, dict(n_components=500, n_chains=300, sparsity_cost=0.1,
                                                             sparsity_on="inputs", **{**_RBM_PCD_LONG, **_STEP_M5_LR2})),
    # ... and both forms at cost 0.01 for the capsule model: is a weaker pull neutral?
    "rb-2x250-m5-lr2-mf3-c300-sp001-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                         n_chains=300, sparsity_cost=0.01)),
    "rb-2x250-m5-lr2-mf3-c300-spi001-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                          n_chains=300, sparsity_cost=0.01,
                                                                          sparsity_on="inputs")),
    # Damped mean-field routing, c <- (1 - d) c_new + d c (4.6): the last named lever. Three
    # damped updates stop the routing nearer its start (the routing at h = 0); six damped
    # updates go about as far as three undamped ones along a smoother path. Run with --epochs 40.
    "rb-2x250-m5-lr2-mf3-d05-c300-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                       routing_damping=0.5, n_chains=300)),
    "rb-2x250-m5-lr2-mf6-d05-c300-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=6,
                                                                       routing_damping=0.5, n_chains=300)),
    # The same two models without assignment biases (plain Model R, 1,382 more parameters
    # instead of 27,450), with 1 and 3 sweeps: is the 3-sweep gain of the biased model (1.6
    # nats against the RBM-500's 0.5, docs/results.md section 16) a gain of its biases, whose
    # model statistics the chains supply? Run with --epochs 40.
    "r-2x250-m5-lr2-mf3-equal-time": (RoutedCapsuleRBM, dict(_PLAIN_2X250, **_STEP_M5_LR2, max_routing=3)),
    "r-2x250-m5-lr2-mf3-k3-equal-time": (RoutedCapsuleRBM, dict(_PLAIN_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                cd_k=3)),
    # ... and with 1 sweep of 300 chains: do the assignment biases own the gain of more chains too?
    "r-2x250-m5-lr2-mf3-c300-equal-time": (RoutedCapsuleRBM, dict(_PLAIN_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                  n_chains=300)),
    # ... over 100 epochs (run with --epochs 100)
    "rb-2x250-m5-lr2-mf3-k3": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3, cd_k=3)),
    # ... and with 5 sweeps: does the gain of the 3 sweeps go on?
    "rb-2x250-m5-lr2-mf3-k5-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, **_STEP_M5_LR2, max_routing=3,
                                                                 cd_k=5)),
    # rb-2x250-m5-equal-time with sampled data statistics (4b.7) from one clamped sweep
    "rb-2x250-m5-post1-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, posterior_sweeps=1, momentum=0.5)),
    # ... one hidden offset for both instances: the A step is then alike for both (a step of
    # alpha) and leaves the routing alone
    "rt-2x500-centred-shared-40": (RoutedCapsuleRBM, dict(_TIED_2X500, centring="shared")),
    "rb-2x250-centred-visible-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, centring="visible")),
    "rb-2x250-centred-all-equal-time": (RoutedCapsuleRBM, dict(_BIASED_2X250, centring="all")),
    "p": (CapsulePoE, dict(n_capsules=16, capsule_dim=8, sampler="mh")),
    "p-reconstruct": (CapsulePoE, dict(n_capsules=16, capsule_dim=8, sampler="reconstruct")),
    # Model G (docs/MODEL_G.md): at learning rates >= 0.05 its training diverged
    "g": (CapsulePoE, dict(n_capsules=16, capsule_dim=8, expert="gaussian", learning_rate=0.01)),
    # Model S (docs/MODEL_G.md): bounded expert gradients allow a large rate (the W gradient
    # carries c_ij ~ 1/J twice: 0.05 barely moved in 2 epochs of 10,000 images). Momentum 0.9
    # on top of rate 1 (a step 10 times the gradient) blew up in epoch 6: keep 0.5 and decay.
    "s": (CapsulePoE, dict(n_capsules=16, capsule_dim=8, expert="spin", learning_rate=1.0,
                           momentum=0.5, lr_schedule="linear")),
    "s-500": (CapsulePoE, dict(n_capsules=50, capsule_dim=10, expert="spin", learning_rate=1.0,
                               momentum=0.5, lr_schedule="linear")),
}


def make_estimator(name, n_iter, random_state=0, **overrides):
    """A fresh estimator for the preset ``name`` trained for ``n_iter`` epochs."""
    cls, kw = PRESETS[name]
    return cls(**{**kw, "n_iter": n_iter, "random_state": random_state, **overrides})


def _n_weights(est):
    """Distinct weights: tied parents (``tie_weights``) share one I x d_h x d_v tensor; a shared
    capsule (``shared_units``) adds its H0 x I x d_v."""
    if hasattr(est, "components_"):
        return int(est.components_.size)
    routed = int(est.W_[:, 0].size if getattr(est, "tie_weights", False) else est.W_.size)
    return routed + (int(est.V_.size) if getattr(est, "V_", None) is not None else 0)


def test_log_likelihood(est, X_test, log_z, rng, n_is=100, n_starts=1):
    """Per-image test log-likelihood in nats (6.5): the estimators' ``log_likelihood``.

    Model R's ``log p~(v)`` is importance sampling over routings with ``n_is`` draws, its
    proposal the mean-field routing (``n_starts = 1``) or a mixture of it and the fixed points
    reached from ``n_starts - 1`` random starts.

    Returns (values (n,), importance-sampling standard errors (n,) for Model R, else None).
    """
    if isinstance(est, RoutedCapsuleRBM):
        return est.log_likelihood(X_test, log_z, n_samples=n_is, random_state=rng, return_std=True,
                                  n_starts=n_starts)
    return est.log_likelihood(X_test, log_z), None


def run(dataset, models, epochs, out_dir, n_ais_runs=100, fast_ais=False, n_train=None, n_test=None,
        sample_steps=1000, seed=0, backend="numba", verbose=0, evaluate_only=False, is_starts=1):
    """Train, evaluate and record every model of ``models``; returns the list of result dicts.

    ``is_starts`` (Model R): mean-field starts of the importance-sampling proposal (1, the
    default, is the estimator of every recorded row; K > 1 mixes in the fixed points of K - 1
    random starts, :meth:`RoutedCapsuleRBM.log_likelihood`), recorded as ``importance_starts``.

    ``backend`` ("numba" or "numpy") is passed to the estimators and to the AIS runs; ``verbose``
    to the estimators (1 prints one line per epoch). With ``evaluate_only`` each model is loaded
    from ``<out_dir>/<name>_model.npz`` instead of trained (its training time is the sum of the
    epoch times in its history) and evaluated as after training.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    X_train, _ = load_dataset(dataset, "train")
    X_test, _ = load_dataset(dataset, "test")
    X_train, X_test = X_train[:n_train], X_test[:n_test]
    V_train = binarize(X_train, "stochastic", random_state=seed)
    V_test = binarize(X_test, "stochastic", random_state=seed + 1)
    base_rate = V_train.mean(axis=0)  # (D,)
    betas = default_betas(fast=fast_ais)
    results = []
    for name in models:
        if evaluate_only:
            est = load_estimator(out / f"{name}_model.npz")
            est.set_params(backend=backend)
            train_seconds = float(sum(row["seconds"] for row in est.history_))
        else:
            est = make_estimator(name, epochs, random_state=seed, backend=backend, verbose=verbose)
            t0 = time.perf_counter()
            est.fit(V_train)
            train_seconds = time.perf_counter() - t0
        base = base_rate if isinstance(est, BernoulliRBM) else to_capsules(base_rate[None], est.image_shape_, est.patch_)[0]
        t0 = time.perf_counter()
        res = ais_log_partition(est, n_runs=n_ais_runs, betas=betas, random_state=seed, base_rate=base,
                                backend=backend)
        ais_seconds = time.perf_counter() - t0
        ll, is_se = test_log_likelihood(est, V_test, res.log_z, np.random.default_rng(seed),
                                        n_starts=is_starts)
        persistent = None if est.persistent_chains_ is None else est.persistent_chains_[:100]
        fresh = est.sample(100, n_steps=sample_steps, init="noise", random_state=seed)
        fresh_p = est.sample(100, n_steps=sample_steps, init="noise", random_state=seed, return_probabilities=True)
        panels = [(f"fresh chains from noise, {sample_steps} sweeps", fresh)]
        if not isinstance(est, CapsulePoE):
            panels.append(("the same chains: probabilities of the next visible draw", fresh_p))
        if persistent is not None:
            panels.insert(0, ("persistent training chains", persistent))
        image_grids(panels, (28, 28), 10, out / f"{name}_samples.png")
        est.save(out / f"{name}_model.npz")
        r = {
            "model": name, "class": type(est).__name__, "backend": backend, "params": {k: repr(v) for k, v in est.get_params().items()},
            "dataset": dataset, "n_train": len(V_train), "n_test": len(V_test),
            "epochs": len(est.history_) if evaluate_only else epochs,
            "n_weights": _n_weights(est), "train_seconds": round(train_seconds, 1),
            "ais_seconds": round(ais_seconds, 1), "ais_runs": n_ais_runs, "ais_temperatures": len(betas),
            "log_z": res.log_z, "log_z_std_error": res.std_error, "log_z_interval": list(res.interval),
            "ais_effective_sample_size": res.effective_sample_size,
            "test_log_likelihood": float(np.mean(ll)),
            "test_log_likelihood_sem": float(np.std(ll) / np.sqrt(len(ll))),
            "importance_sampling_mean_se": None if is_se is None else float(np.mean(is_se)),
            "importance_starts": None if is_se is None else int(is_starts),
            "last_epoch": est.history_[-1] if est.history_ else None,
        }
        (out / f"{name}.json").write_text(json.dumps(r, indent=2, default=float) + "\n")
        results.append(r)
        print(f"{name}: test log-likelihood {r['test_log_likelihood']:.2f} nats "
              f"(log Z {res.log_z:.2f} +- {res.std_error:.3f}), train {train_seconds:.0f} s", flush=True)
    _write_table(out)
    return results


def _write_table(out):
    """Write ``results.md`` from every ``<name>.json`` in ``out`` (earlier runs included)."""
    results = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]
    path = Path(out) / "results.md"
    lines = ["| model | weights | epochs | train s | log Z (AIS, se) | test LL (nats/image) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['n_weights']:,} | {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['log_z']:.2f} ({r['log_z_std_error']:.3f}) | {r['test_log_likelihood']:.2f} |")
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="capsnp experiment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "embedded"])
    ap.add_argument("--models", default="rbm-cd1,rbm-pcd,r", help=f"comma-separated, from {sorted(PRESETS)}")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--ais-runs", type=int, default=100)
    ap.add_argument("--fast-ais", action="store_true", help="1,450 temperatures instead of 14,500")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--sample-steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                    help="compiled kernels (default) or the NumPy reference")
    ap.add_argument("--verbose", type=int, default=1, help="estimator verbosity (1: a line per epoch)")
    ap.add_argument("--out", default=None, help="output directory (default: docs/results/<dataset>)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="load <out>/<model>_model.npz instead of training, then evaluate as usual")
    ap.add_argument("--is-starts", type=_positive_int, default=1,
                    help="capsule models: mean-field starts of the importance-sampling proposal "
                         "(default 1; K > 1 mixes in the fixed points of K - 1 random starts)")
    a = ap.parse_args(argv)
    run(a.dataset, a.models.split(","), a.epochs, a.out or f"docs/results/{a.dataset}", a.ais_runs, a.fast_ais,
        a.n_train, a.n_test, a.sample_steps, a.seed, a.backend, a.verbose, a.evaluate_only, a.is_starts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
