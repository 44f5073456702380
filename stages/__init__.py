"""One module per DVC stage (scope, data, pretrain, select, adapt, align, evaluate, package) and what they share."""
