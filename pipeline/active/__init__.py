"""What clinicians see next: propagation of a validated slice through its volume (FM
pseudo-labels with no task model), and active-learning order (issue 10)."""
