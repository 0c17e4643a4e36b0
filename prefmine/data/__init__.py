"""Data: raw loaders, cleaning, pseudonymisation, the leave-one-out split and the canonical dataset."""
