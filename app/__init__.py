"""stripeline: a self-hosted Stripe webhook processor."""
