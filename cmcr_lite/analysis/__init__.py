"""Diagnostics the notebooks use to look inside trained models, none of them part of the method:

* ``probes`` -- closed-form linear probes of features (what a feature carries; twin separability);
* ``codebook`` -- codebook usage, sharing between points and pixels, perplexity over training;
* ``occupancy`` -- occupancy decoder accuracy per query kind, decoder-only fits, BEV and 3D renderings;
* ``twins`` -- the twins' evidence in the data: intensity separability, an object's side profile, its rib bands.
"""
