"""Kernel rules per lane (`cpu`, `cpu_generic`, `adreno`, `hexagon`) and tuning; a lane's module is
picked by the lane registry (`targets.lanes.lane_for(target).kernels()`), never by target kind."""
