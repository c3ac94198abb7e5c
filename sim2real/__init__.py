"""twinloop.sim2real: the MuJoCo twin of the cell and system identification."""
