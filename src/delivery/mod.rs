//! Delivery control: flights, budgets, pacing and frequency caps, and the state they share.

pub mod state;
