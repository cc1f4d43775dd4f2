"""Small shared helpers, standard library only: user-facing errors, atomic writes, JSON reading, progress bars,
saving figures."""
