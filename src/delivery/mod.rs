//! Delivery control: flights, budgets, pacing and frequency caps, and the state they share.

pub mod curve;
pub mod pacing;
pub mod simulation;
pub mod state;
