"""SU(2) lattice gauge theory with dynamical staggered fermions (DESIGN §9): lattice, links, gauge and staggered parts.

The modules are pure torch functions on batched link fields [B, 4, V, 2, 2] (B independent chains);
no MPI, no files, no configuration.
"""
