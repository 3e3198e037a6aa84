"""Privacy maths both sides use: update clipping and noise, per-window DP-SGD, RDP accounting,
and the secure-aggregation field arithmetic."""
