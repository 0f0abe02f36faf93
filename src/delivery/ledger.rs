//! Decisions that charged a budget or reserved a capped view, waiting for their impression.
//!
//! A slot's decision charges the campaign's cost and reserves the visitor's view at once (so
//! parallel decisions cannot overspend or pass a cap); the impression comes later, on this node
//! or another. When the impression URL expires, the ticker asks the counted-once memory (local,
//! or shared in Redis) whether it was counted: if not, the charge is refunded and the view
//! released. The ledger is bounded and kept in memory only: after a restart, or when full, a
//! reservation stays charged (under-spend and one view too many held, never an overspend).

use std::collections::VecDeque;
use std::sync::Mutex;

use super::identity::Keys;
use crate::campaigns::Micros;

/// Most reservations remembered (about 100 bytes each).
pub const MAX_ENTRIES: usize = 2_000_000;

/// One decision's charge and reservation.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The decision id (the tracking tokens' id).
    pub id: [u8; 12],
    /// When its impression URL expires (Unix seconds).
    pub expires: i64,
    /// The campaign.
    pub campaign: u32,
    /// The campaign's day the charge belongs to.
    pub day: i32,
    /// What was charged (micro-units).
    pub cost: Micros,
    /// The identity keys a view was reserved under; `None` when not capped.
    pub keys: Option<Keys>,
}

/// Reservations in order of expiry (all URLs live equally long).
#[derive(Default)]
pub struct Ledger {
    queue: Mutex<VecDeque<Reservation>>,
}

impl Ledger {
    /// Remembers a reservation; `false` when the ledger is full (it then stays charged).
    pub fn push(&self, reservation: Reservation) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= MAX_ENTRIES {
            return false;
        }
        queue.push_back(reservation);
        true
    }

    /// Takes the reservations expired at `now`.
    pub fn due(&self, now: i64) -> Vec<Reservation> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = queue.partition_point(|r| r.expires <= now);
        queue.drain(..n).collect()
    }

    /// Reservations waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
