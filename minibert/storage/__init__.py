"""What goes to disk: checkpoints (`checkpoint`) and the one atomic writer and directory lock (`fileio`)."""
