"""The task model: network, training set, training and holdout evaluation."""
