"""Handover: pick-up and return (P-18). The selfie is shown only at the handover, to the right staff, once."""
