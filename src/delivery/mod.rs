//! Delivery control: flights, budgets, pacing and frequency caps.

pub mod curve;
pub mod pacing;
pub mod simulation;
