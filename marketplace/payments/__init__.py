"""Payments (step 6): saved cards, the MIT mandate, booking payments, deposits, refunds, payouts.

``gateway`` is the only module that talks to Stripe (and the only one that imports ``stripe``); it is private
to this area: other areas go through the payments service (coming next).
"""
