"""rnn-sweep: truncated-BPTT sweeps over batch_size x num_steps x cell, with measured dependency lengths."""
