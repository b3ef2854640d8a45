//! The late-write hazard (070 §4) and the peer's generation check.
