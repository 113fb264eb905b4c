"""Meta-training the metanetwork: the loop, the zoo of data models, the group regulariser."""
