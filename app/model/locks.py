"""The per-customer advisory lock: one transaction at a time writes a customer's rows.

Taken (transaction-scoped, in sorted order) by every batch for the customers of its events,
tried by the scheduled segment refresh and by a batch for customers it reaches only through
an invoice, and taken by the API's writes of user data.
"""

# The SQL expression of a customer's lock key, for a customer id expression.
CUSTOMER_LOCK_KEY = "hashtextextended({}, 0)"


def customer_lock_key(expression: str) -> str:
    return CUSTOMER_LOCK_KEY.format(expression)
