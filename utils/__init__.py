"""Small shared helpers, standard library only: user-facing errors, option validation, atomic writes, JSON reading,
progress bars, saving figures."""
