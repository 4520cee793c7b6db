"""Stage 3, attacks: the attack declarations, compiled attack steps, universal perturbations, the attack job and adversarial training (which hands the attack to models.train)."""
