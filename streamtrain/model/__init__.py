"""The two-tower model (:mod:`.two_tower`), its users' recent-item histories (:mod:`.history`) and the
row-sparse optimizer of its tables (:mod:`.sparse_optim`). The vocabularies that map ids to rows are
:mod:`streamtrain.vocab`."""
