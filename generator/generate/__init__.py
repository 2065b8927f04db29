"""Case generation: propose new cases per domain, harden existing ones, and the stage machinery they share."""
